"""crds/ is generated from the typed models; this fails when someone edits one without the other."""

from pathlib import Path

import yaml

from pitcrew.api import crdgen

REPO = Path(__file__).resolve().parents[2]


def test_crd_files_match_models() -> None:
    for path in crdgen.default_paths():
        assert path.is_relative_to(REPO)
        assert path.read_text() == crdgen.render(), (
            f"{path.relative_to(REPO)} is stale: run `make crds` (python -m pitcrew.api.crdgen) and commit it"
        )


def _walk(schema: dict, path: str = ""):  # type: ignore[no-untyped-def]
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_documented() -> None:
    crd = yaml.safe_load(crdgen.render())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root["properties"]["spec"], "spec"):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if path != "spec" and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description: kubectl explain would show nothing"


def test_every_status_field_is_declared() -> None:
    """kopf writes status with merge patches; undeclared fields would be pruned silently."""
    crd = yaml.safe_load(crdgen.render())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    declared = set(status["properties"])
    for field in (
        "phase",
        "conditions",
        "cacheKey",
        "engine",
        "job",
        "progress",
        "observedGeneration",
        "startTime",
        "completionTime",
        "message",
    ):
        assert field in declared
    engine = set(status["properties"]["engine"]["properties"])
    assert {
        "uri",
        "manifestUri",
        "sizeBytes",
        "fileCount",
        "manifestSha256",
        "computeCapability",
        "trtllmVersion",
        "tensorrtVersion",
    } <= engine


def test_names_and_printer_columns() -> None:
    crd = yaml.safe_load(crdgen.render())
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["plural"], names["kind"]) == (
        "pitcrew.dev",
        "enginebuilds",
        "EngineBuild",
    )
    assert names["shortNames"] == ["eb"] and "pitcrew" in names["categories"]
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Phase", "Model", "Backend", "GPU", "Engine", "Age"]
