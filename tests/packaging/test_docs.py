"""Generated documentation stays in step with what it is generated from."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_crd_reference_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "docs/gen_crd_reference.py"), "--check"])
    assert result.returncode == 0, "docs/crd-reference.md is stale: run python3 docs/gen_crd_reference.py"


def test_crd_reference_documents_every_field_and_rule():
    text = (ROOT / "docs/crd-reference.md").read_text()
    for needle in ["spec.passive.portStart", "spec.auth.passwordSecretRef", "spec.username is immutable",
                   "status.conditions", "spec.tls.source"]:
        assert needle in text, needle
