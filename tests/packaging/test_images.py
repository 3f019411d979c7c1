"""Checks the container build files as far as they can be checked without a Docker engine:
multi-stage, pinned (never `latest`) base images, a numeric non-root USER, no shell needed
(exec-form ENTRYPOINT), and binaries that the workspace really builds."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    ROOT / "Dockerfile": "sluice-operator",
    ROOT / "server" / "Dockerfile": "sluice-server",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    text = path.read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def binaries() -> set[str]:
    names = set()
    for manifest in [ROOT / "Cargo.toml", ROOT / "server" / "Cargo.toml"]:
        data = tomllib.loads(manifest.read_text())
        for binary in data.get("bin", []):
            names.add(binary["name"])
    return names


@pytest.mark.parametrize("path", list(IMAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_is_hardened(path):
    steps = instructions(path)
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for image in froms:
        ref = image.split()[0]
        assert ":" in ref.split("/")[-1], f"{ref} has no tag"
        assert not ref.endswith(":latest"), f"{ref} uses latest"
    users = [rest for word, rest in steps if word == "USER"]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"USER {users[-1]} is not a numeric non-root user"
    entry = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert entry and entry[-1].startswith("["), "ENTRYPOINT must be exec form (no shell in the image)"
    labels = " ".join(rest for word, rest in steps if word == "LABEL")
    for key in ["org.opencontainers.image.title", "org.opencontainers.image.version"]:
        assert key in labels


@pytest.mark.parametrize("path,binary", list(IMAGES.items()), ids=lambda p: str(p))
def test_dockerfile_copies_a_binary_the_workspace_builds(path, binary):
    assert binary in binaries()
    text = path.read_text()
    assert f"-p {binary}" in text
    copied = re.findall(r"COPY --from=build (\S+)", text)
    assert f"/src/target/release/{binary}" in copied
    assert re.search(rf'ENTRYPOINT \["/usr/local/bin/{binary}"\]', text)
