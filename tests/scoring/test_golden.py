"""Every bundled preset family gives the tables frozen in tests/golden (see tests/golden.py): a refactoring
that moves a number is caught here, and a deliberate change regenerates them in a commit that says why."""

import numpy as np
import pandas as pd
import pytest
from golden import GOLDEN, PRESETS, TABLES, produce


@pytest.mark.parametrize("preset", PRESETS)
def test_outputs_equal_the_frozen_ones(preset, tmp_path):
    tables = produce(preset, tmp_path)
    for name in TABLES:
        expected = pd.read_csv(GOLDEN / preset / name, keep_default_na=False)
        got = pd.read_csv(tables[name], keep_default_na=False)
        assert list(got.columns) == list(expected.columns), (preset, name)
        assert len(got) == len(expected), (preset, name)
        for column in expected.columns:
            a, b = expected[column], got[column]
            if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
                # Exact up to the last bits a different NumPy or CPU may round otherwise.
                np.testing.assert_allclose(b.to_numpy(float), a.to_numpy(float), rtol=1e-12, atol=1e-12,
                                           equal_nan=True, err_msg=f"{preset} {name} {column}")
            else:
                assert b.astype(str).tolist() == a.astype(str).tolist(), (preset, name, column)
