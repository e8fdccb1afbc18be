"""Print the speed-up lines the benchmarks record, at the end of the run (also under -q)."""


def pytest_terminal_summary(terminalreporter):
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "ratio_line"
    ]
    if lines:
        terminalreporter.section("speed-ups")
        for line in lines:
            terminalreporter.write_line(line)
