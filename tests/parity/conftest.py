"""Collects the errors the parity tests measure and prints the worst per check at the
end of the run, so the numbers quoted in README.md can be reproduced with
`python -m pytest tests/parity`."""
import pytest

MEASURED: dict[str, float] = {}


@pytest.fixture
def record():
    def record(check: str, error: float) -> float:
        MEASURED[check] = max(MEASURED.get(check, 0.0), float(error))
        return error
    return record


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("parity: worst measured error per check")
        for check, error in MEASURED.items():
            terminalreporter.write_line(f"{check:<48} {error:.2e}")
