"""`python -m shared.export_hf`: the documented command; the code is in shared/interop/export_hf.py."""
import sys

from shared.interop.export_hf import main

if __name__ == "__main__":
    sys.exit(main())
