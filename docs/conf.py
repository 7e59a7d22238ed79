"""Sphinx configuration of the spark_somas site (``make docs``).

Pages are MyST Markdown; notebooks and the pages with ``{code-cell}`` blocks
are executed by MyST-NB at build time and cached (jupyter-cache, under
``docs/_build/.jupyter_cache``), so a rebuild re-executes only a notebook
whose code changed. The API reference is generated from the docstrings
(autodoc + autosummary, Google-style sections through napoleon). Maths
renders with MathJax, served from the build itself (no CDN needed).
"""

import importlib
import pkgutil
import inspect
import os
import pathlib
import re
import shutil
import sys

import mathjax  # django-static-mathjax: a copy of MathJax 3 as package data

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
# Kernels must draw with Jupyter's inline backend, or the pages get no figures:
# an inherited MPLBACKEND (e.g. Agg from a test environment) would win over it.
os.environ.pop("MPLBACKEND", None)

import spark_somas  # noqa: E402

project = "spark_somas"
author = "spark_somas developers"
copyright = "spark_somas developers"
release = version = spark_somas.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "sphinx_copybutton",
]

exclude_patterns = ["_build", "_templates", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# --- HTML: furo --------------------------------------------------------------
html_theme = "furo"
html_title = f"spark_somas {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {"navigation_with_keys": True}
# Curly quotes and ellipses, but no dashes: "--data-dir" in an option's help
# (the generated command-line reference) must stay copyable, not "–data-dir".
smartquotes_action = "qe"
pygments_style = "friendly"
pygments_dark_style = "monokai"

# --- Maths: MathJax 3 from the build's own _static ----------------------------
MATHJAX_SRC = pathlib.Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
mathjax_path = "mathjax/tex-svg.js"
mathjax3_config = {"tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]}}


def _copy_mathjax(app, exception):
    """Copy the MathJax files the pages load (the SVG output needs no fonts)."""
    if exception is not None or app.builder.format != "html":
        return
    target = pathlib.Path(app.outdir) / "_static" / "mathjax"
    if (target / "tex-svg.js").exists():
        return
    for part in ("tex-svg.js", "input/tex/extensions", "output/svg", "ui", "a11y", "sre"):
        src = MATHJAX_SRC / part
        if src.is_dir():
            shutil.copytree(src, target / part, dirs_exist_ok=True)
        elif src.exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / part)


# --- MyST and MyST-NB ----------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "cache"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_in_temp = True  # notebooks write their files into a temporary folder
nb_execution_show_tb = True
nb_merge_streams = True

# --- API reference -------------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False  # a module's __all__ is its public API
autosummary_imported_members = False
autodoc_member_order = "bysource"


def _reexported_exceptions() -> list[str]:
    """``module.Name`` of each exception a module lists in ``__all__`` but
    another module of the package defines (``spark_somas.configs.ConfigError``
    is :mod:`spark_somas.errors`'s): its page on the re-exporting module is
    kept out of the index, so that a bare ``ConfigError`` has one target."""
    names = set()
    for info in pkgutil.walk_packages(spark_somas.__path__, "spark_somas."):
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if (isinstance(obj, type) and issubclass(obj, BaseException)
                    and obj.__module__ != module.__name__):
                names.add(f"{module.__name__}.{name}")
    return sorted(names)


autosummary_context = {"reexported": _reexported_exceptions()}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autoclass_content = "both"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False


# Flax NNX classes are built by a metaclass whose ``__call__(*args, **kwargs)``
# autodoc would show as every Module's signature; read ``__init__`` instead.
_NNX_METACLASS_CALLS = {f"{type(cls).__call__.__module__}.{type(cls).__call__.__qualname__}"
                        for cls in (spark_somas.ExponentialSoma, spark_somas.SomaState)}
for _module in ("sphinx.ext.autodoc._dynamic._signatures",
                "sphinx.ext.autodoc._legacy_class_based._documenters"):
    try:
        _mod = importlib.import_module(_module)
    except ImportError:
        continue
    _mod._METACLASS_CALL_BLACKLIST = _mod._METACLASS_CALL_BLACKLIST | _NNX_METACLASS_CALLS


_GREEK = {"τ": r"\tau", "Δ": r"\Delta", "θ": r"\theta"}


def _tex(symbol: str) -> str:
    """A config field's symbol (``τ_m``, ``V_th``, ``Δθ``) as LaTeX (``\\tau_{m}``, …)."""
    for letter, tex in _GREEK.items():
        symbol = symbol.replace(letter, tex + " ")
    return re.sub(r"_(\w+)", r"_{\1}", symbol).strip()


def _number(value: float) -> str:
    """A bound as LaTeX: ``10^{-6}`` for 1e-06, ``0`` for 0."""
    mantissa, _, exponent = f"{value:g}".partition("e")
    if not exponent:
        return mantissa
    power = f"10^{{{int(exponent)}}}"
    return power if mantissa == "1" else rf"{mantissa} \times {power}"


def _config_fields(app, what, name, obj, options, lines):
    """Append a table of a soma config's fields (symbol, units, default, rule) to its page,
    read from the fields' own metadata, so it cannot drift from the code; symbols and
    rules in maths, as the Models page writes them."""
    if what != "class" or not isinstance(obj, type):
        return
    if not issubclass(obj, spark_somas.ExponentialSomaConfig):
        return
    fields = obj.quantity_fields()
    symbols = {f.name: _tex(f.metadata["symbol"]) for f in fields}
    ops = {">": ">", ">=": r"\geq", "<": "<"}

    def rule(field):
        r = field.metadata["rule"]
        if r.op == "finite":
            return "any value"
        bound = symbols.get(r.bound, r.bound) if isinstance(r.bound, str) else _number(r.bound)
        return f":math:`{symbols[field.name]} {ops[r.op]} {bound}`"

    lines += ["", ".. list-table:: Fields", "   :header-rows: 1", "",
              "   * - field", "     - symbol", "     - units", "     - default",
              "     - meaning", "     - rule"]
    for field in fields:
        meta = field.metadata
        lines += [f"   * - ``{field.name}``", f"     - :math:`{symbols[field.name]}`",
                  f"     - {meta['units']}", f"     - {field.default:g}", f"     - {meta['doc']}",
                  f"     - {rule(field)}"]
    largest = _number(spark_somas.models.configs.LARGEST)
    lines += ["", f"Every field is also finite and within :math:`\\pm {largest}` in its unit (a "
              "broken rule is refused at construction, naming the field, the value and the "
              "rule). Every field takes a float, an array broadcastable to the soma's ``units`` "
              "or an initializer ``(key, shape, dtype) -> array``; ``surrogate`` picks the "
              "surrogate gradient and ``detach_reset`` whether the reset is detached from it.",
              ""]


def _hide_internal_arguments(app, what, name, obj, options, signature, return_annotation):
    """A config's signature without the dataclass flag it uses internally."""
    if signature and "__skip_validation__" in signature:
        signature = re.sub(r",\s*__skip_validation__=\w+", "", signature)
    return signature, return_annotation


def _args_section(doc: str) -> list[str]:
    """The Google-style ``Args:`` block of a docstring (its heading and indented lines)."""
    lines = doc.splitlines()
    if "Args:" not in lines:
        return []
    start = lines.index("Args:")
    block = [lines[start]]
    for line in lines[start + 1:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return block


def _inherited_constructor(app, what, name, obj, options, lines):
    """A class whose constructor is inherited shows that constructor's
    arguments: a soma subclass's page lists ``config``, ``units``, ``dt``, …
    as ``ExponentialSoma``'s does. Runs before napoleon reads the Google style."""
    if what != "class" or not isinstance(obj, type) or "Args:" in lines:
        return
    owner = next((c for c in obj.__mro__[1:] if "__init__" in vars(c)), None)
    if owner is None or owner.__module__.split(".")[0] != "spark_somas":
        return
    args = _args_section(inspect.getdoc(owner) or "")
    if args:
        lines += ["", f"Its constructor is :class:`~{owner.__module__}.{owner.__qualname__}`'s.",
                  "", *args, ""]


# The somas' static methods are their model's equations in the form the shared
# step (``spark_somas.somas.step``) calls; the class docstring states the same
# equations, so the pages show the constructor and the methods a user calls.
_SOMA_PROTOCOL = {id(v.__func__) for cls in spark_somas.SOMAS.values() for c in cls.__mro__
                  for v in vars(c).values() if isinstance(v, staticmethod)}


# Earlier names of the protocol's derived lists still read (with a warning)
# but are not documented: the pages show the one name of each.
_RENAMED = {n for n, v in vars(importlib.import_module("spark_somas.models.protocol").Soma)
            .items() if hasattr(v, "renamed_to")}


def _skip_protocol(app, what, name, obj, skip, options):
    return True if what == "class" and (id(obj) in _SOMA_PROTOCOL or name in _RENAMED) else None


def setup(app):
    app.connect("build-finished", _copy_mathjax)
    app.connect("autodoc-process-docstring", _inherited_constructor, priority=400)
    app.connect("autodoc-process-docstring", _config_fields)
    app.connect("autodoc-skip-member", _skip_protocol)
    app.connect("autodoc-process-signature", _hide_internal_arguments)
