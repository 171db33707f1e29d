"""The offline HTML report the demo writes: a table shows at most max_rows rows, a count refused otherwise."""

from __future__ import annotations

import pandas as pd
import pytest

from attnlab.errors import InvalidInput
from attnlab.viz.report import Report


def test_a_long_table_is_cut_and_says_how_many_rows_are_left_out(tmp_path):
    report = Report("t").table(pd.DataFrame({"a": range(10)}), max_rows=4)
    report.save(tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert text.count("<td>") == 4 and "(6 more rows in the CSV files)" in text


@pytest.mark.parametrize("bad", [True, 2.0, 0, -1, "3"])
def test_max_rows_must_be_a_count(bad):
    with pytest.raises(InvalidInput, match="max_rows must be a whole number >= 1"):
        Report("t").table(pd.DataFrame({"a": [1]}), max_rows=bad)
