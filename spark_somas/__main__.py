"""``python -m spark_somas``: the ``spark-somas`` command line."""

import sys

from spark_somas.cli import main

if __name__ == "__main__":
    sys.exit(main())
