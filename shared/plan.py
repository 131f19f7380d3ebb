"""`python -m shared.plan`: the documented command; the code is in shared/planner/plan.py."""
import sys

from shared.planner.plan import main

if __name__ == "__main__":
    sys.exit(main())
