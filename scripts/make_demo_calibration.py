"""Write qexport/frontend/demo_calibration.npz: the built-in demo models' calibrated parameters.

Run after changing anything the demo's calibration depends on (seed, weights, calibration images,
the quantizer); tests/test_demo.py fails until the file matches a fresh calibration.

    python scripts/make_demo_calibration.py
"""

from __future__ import annotations

import numpy as np

from qexport.frontend.demo import CALIBRATED_DEMOS, CALIBRATION_FILE, calibration_arrays
from qexport.frontend.models.resolve import builtin_model


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, act_clip in CALIBRATED_DEMOS:
        arrays |= calibration_arrays(builtin_model(name), act_clip)  # type: ignore[arg-type]
    np.savez_compressed(CALIBRATION_FILE, **arrays)
    print(f"wrote {CALIBRATION_FILE} ({CALIBRATION_FILE.stat().st_size} bytes, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
