"""Profile keys that say which convs a systolic core takes (issue 15 item 6)."""

from __future__ import annotations

import pytest

from qexport.errors import InputError
from qexport.layout.profile import load_profile, parse_profile


def test_the_builtin_profiles_tile_any_kernel_and_stride() -> None:
    # the course core's grid and passes follow from the conv's geometry (README: Tiling)
    for name in ("course", "course-os", "systolic"):
        prof = load_profile(name)
        assert (prof.kernels, prof.strides) == ((), ())


@pytest.mark.parametrize("value", ["[]", "[0]", "[3, true]", '"3"', "3", "[16]"])
@pytest.mark.parametrize("key", ["kernels", "strides"])
def test_bad_kernels_or_strides_are_refused_naming_the_key(key: str, value: str) -> None:
    text = f"{key} = {value}\n" + load_profile("systolic").source  # before [names]
    with pytest.raises(
        InputError, match=rf"profile mine: key '{key}' = .*; a non-empty list of integers in 1\.\.15"
    ):
        parse_profile(text, "profile mine")


def test_kernels_and_strides_read_as_tuples() -> None:
    text = "kernels = [1, 3]\nstrides = [1, 2]\n" + load_profile("systolic").source
    prof = parse_profile(text, "mine")
    assert (prof.kernels, prof.strides) == ((1, 3), (1, 2))
