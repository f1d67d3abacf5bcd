from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/ from the current output (review the diff before committing)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a developer's own ./data (real CIFAR-10) must not change what the demo tests see
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision accept the fake CIFAR-10 of ``helpers.write_fake_cifar10`` (tests only).

    torchvision checks the batches' MD5s in ``CIFAR10._check_integrity`` and the metadata's in
    ``_load_meta``, both through the ``check_integrity`` its ``cifar`` module imported; both are
    patched here, and the product always keeps the check on. A missing file still fails, so
    "no dataset here" tests behave as on a real machine.
    """
    import torchvision.datasets.cifar as cifar

    def exists_only(self: cifar.CIFAR10) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", exists_only)
    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())
