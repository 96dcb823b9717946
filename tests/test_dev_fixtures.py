"""flexavatar.dev_fixtures: where tests and benchmarks find the (unshipped) fixtures."""
from __future__ import annotations

from pathlib import Path

from flexavatar.dev_fixtures import ENV_VAR, fixtures_dir


def test_default_is_shared_beside_the_checkout(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert fixtures_dir() == repo.parent / "shared" / "fixtures"
    assert (fixtures_dir() / "official_flex" / "SPEC.md").is_file()


def test_environment_variable_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "staged"))
    assert fixtures_dir() == (tmp_path / "staged").resolve()
