"""`python -m shared.import_hf`: the documented command; the code is in shared/interop/import_hf.py."""
import sys

from shared.interop.import_hf import main

if __name__ == "__main__":
    sys.exit(main())
