"""Background cohorts in signed bundles: export → import on a second store calibrates identically; refusals."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelsieve.api.cli import main
from modelsieve.fingerprint.calibration import calibrate
from modelsieve.hashlists.bundles import _write_bundle, export_background, import_bundle
from modelsieve.hashlists.errors import BundleError, InvalidEntryError
from modelsieve.hashlists.signing import generate_key_files, load_private_key
from modelsieve.hashlists.store import Store, open_store
from modelsieve.hashlists.trust import trust_publisher
from tests.calibration_fixtures import BASE, COHORT_SEEDS, KEY, base, family, fp, tuned
from tests.store_backends import StoreLocations


@dataclass
class Exchange:
    publisher: Store
    importer: Store
    key_file: Path
    bundle: Path
    locations: tuple[str, str]  # (publisher's, importer's), for the CLI


@pytest.fixture
def exchange(tmp_path: Path, store_locations: StoreLocations) -> Iterator[Exchange]:
    generate_key_files(tmp_path / "lab.key", tmp_path / "lab.pub")
    locations = (store_locations.new("lab"), store_locations.new("hub"))
    publisher, importer = open_store(locations[0]), open_store(locations[1])
    trust_publisher(importer, "lab", (tmp_path / "lab.pub").read_text(), "full")
    publisher.add_background(BASE, [tuned(s) for s in COHORT_SEEDS], sources=[f"tune-{s}" for s in COHORT_SEEDS])
    yield Exchange(publisher, importer, tmp_path / "lab.key", tmp_path / "cohort.bundle", locations)
    publisher.close()
    importer.close()


def test_an_imported_cohort_gives_exactly_the_publishers_calibrated_scores(exchange: Exchange) -> None:
    manifest = export_background(exchange.publisher, BASE, load_private_key(exchange.key_file), exchange.bundle, as_name="lab")
    assert manifest.type == "background" and manifest.counts == {"background": len(COHORT_SEEDS)}
    assert exchange.importer.cohorts(KEY) == {}
    report = import_bundle(exchange.importer, exchange.bundle)
    assert (report.publisher, report.type, report.background) == ("lab", "background", len(COHORT_SEEDS))
    members = exchange.importer.list_background(BASE)
    assert sorted(m.id for m in members) == sorted(m.id for m in exchange.publisher.list_background(BASE))
    assert {m.source for m in members} == {f"lab: tune-{s}" for s in COHORT_SEEDS}, "imported members name their publisher"
    for query in (tuned(1), tuned(2)):  # the listed model itself (seed 1) and an independent sibling
        theirs = calibrate(query, tuned(1), exchange.publisher.cohorts(KEY))
        ours = calibrate(query, tuned(1), exchange.importer.cohorts(KEY))
        assert ours.calibrated and ours == theirs
    assert import_bundle(exchange.importer, exchange.bundle).background == len(COHORT_SEEDS)
    assert len(exchange.importer.list_background(BASE)) == len(COHORT_SEEDS), "a re-import adds nothing"


def test_altered_or_untrusted_cohort_bundles_are_refused_without_change(exchange: Exchange, tmp_path: Path) -> None:
    export_background(exchange.publisher, BASE, load_private_key(exchange.key_file), exchange.bundle, as_name="lab")
    lines = exchange.bundle.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[2])
    record["source"] = "swapped"
    altered = tmp_path / "altered.bundle"
    altered.write_bytes(b"".join([*lines[:2], json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n", *lines[3:]]))
    with pytest.raises(BundleError, match="altered"):
        import_bundle(exchange.importer, altered)
    generate_key_files(tmp_path / "stranger.key", tmp_path / "stranger.pub")
    export_background(exchange.publisher, BASE, load_private_key(tmp_path / "stranger.key"), tmp_path / "s.bundle", as_name="stranger")
    with pytest.raises(BundleError):
        import_bundle(exchange.importer, tmp_path / "s.bundle")
    assert exchange.importer.list_background() == []
    with pytest.raises(InvalidEntryError, match="no background cohort"):
        export_background(exchange.publisher, "sdxl", load_private_key(exchange.key_file), tmp_path / "none.bundle", as_name="lab")


def _signed(exchange: Exchange, records: list[dict[str, object]]) -> Path:
    header = {"type": "background", "publisher": "lab", "list": None, "from_seq": 0, "to_seq": 0,
              "notes_included": False, "schemes": {"background": 1}}
    _write_bundle(exchange.bundle, load_private_key(exchange.key_file), header, iter(records))
    return exchange.bundle


def test_a_signed_cohort_holding_the_base_itself_is_refused_as_a_whole(exchange: Exchange) -> None:
    """A partner's cohort with the base as a zero-change member would narrow this store's null."""
    good = {"type": "background", "base": BASE, "source": "ok", "fingerprint": base64.b64encode(tuned(100).to_bytes()).decode()}
    itself = {**good, "source": "the base", "fingerprint": base64.b64encode(fp(family().checkpoint(family().base)).to_bytes()).decode()}
    with pytest.raises(BundleError, match="changes nothing beyond rounding noise"):
        import_bundle(exchange.importer, _signed(exchange, [good, itself]))
    assert exchange.importer.list_background() == []


def test_a_signed_cohort_of_a_raw_fingerprint_is_refused_as_a_whole(exchange: Exchange) -> None:
    good = {"type": "background", "base": BASE, "source": "ok", "fingerprint": base64.b64encode(tuned(100).to_bytes()).decode()}
    raw = {**good, "fingerprint": base64.b64encode(base().fingerprint.to_bytes()).decode()}
    with pytest.raises(BundleError, match="cannot be added"):
        import_bundle(exchange.importer, _signed(exchange, [good, raw]))
    assert exchange.importer.list_background() == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(st.sampled_from(["base", "fingerprint", "source"]),
                                st.one_of(st.just(BASE), st.text(max_size=20), st.integers(), st.none(),
                                          st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()))),
                min_size=1, max_size=3))
def test_hostile_signed_records_are_refused_with_a_bundle_error(exchange: Exchange, records: list[dict[str, object]]) -> None:
    with pytest.raises(BundleError):  # signed by a trusted publisher, yet no record is a readable delta fingerprint
        import_bundle(exchange.importer, _signed(exchange, [{**r, "type": "background"} for r in records]))
    assert exchange.importer.list_background() == []


def test_cohort_bundles_from_the_cli(exchange: Exchange, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exchange.publisher.close()
    exchange.importer.close()
    publisher, importer = exchange.locations
    args = ["bases", "export-background", "--base", BASE, "--key", str(exchange.key_file), "--as", "lab", "-o", str(exchange.bundle)]
    assert main([*args, "--db", publisher, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"background": len(COHORT_SEEDS)}
    assert main(["list", "import", str(exchange.bundle), "--db", importer]) == 0
    assert f"{len(COHORT_SEEDS)} background cohort models from lab" in capsys.readouterr().out
    assert main(["bases", "export-background", "--base", "sdxl", "--key", str(exchange.key_file), "--as", "lab",
                 "-o", str(tmp_path / "x.bundle"), "--db", publisher]) == 2
    with open_store(importer) as store:
        assert len(store.list_background(BASE)) == len(COHORT_SEEDS)
