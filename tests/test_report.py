"""reproduce.report: the table renderer and where a result file came from."""

import pytest

from reproduce import report


def test_a_pipe_inside_a_cell_is_escaped_and_a_short_row_refused():
    assert report.markdown_table(["a", "b"], [["max |x|", 1]]) == (
        "| a | b |\n|---|---|\n| max \\|x\\| | 1 |")
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        report.markdown_table(["a", "b"], [["x"]])


@pytest.mark.parametrize("value, text", [
    (None, ""), (0.10759, "0.108"), (19.509, "19.5"), (214.1, "214"), (1136.9, "1,137")])
def test_figures_have_three_significant_digits_and_thousands_separators(value, text):
    assert report.figure(value) == text


def test_provenance_records_the_machine_with_one_gemm_reading_per_process():
    import os
    import platform
    from pathlib import Path

    made = report.provenance(12.34)
    machine = made["machine"]
    cpuinfo = Path("/proc/cpuinfo")
    names = ([line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.is_file() else [])
    # Read here from the source, not through the function under test.
    assert machine["cpu"] == (names[0] if names else platform.processor() or "unknown")
    assert machine["cores"] == os.cpu_count()
    assert machine["gemm_gflops"] > 0
    assert report.gemm_gflops.cache_info().currsize == 1  # measured once, then reused
    assert report.provenance()["machine"]["gemm_gflops"] == machine["gemm_gflops"]
    assert made["seconds"] == 12.3 and made["command"][0] == "python"
