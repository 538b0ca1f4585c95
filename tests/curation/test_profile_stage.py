"""The profile stage on the bad-input corpus: every row accounted for, codes as documented."""

from __future__ import annotations

import pytest

from curation.edge_cases import edge_cases
from curation.stages.profile import ProfileStage
from infra.config import ConfigError, from_dict
from infra.tables import PROFILES
from tests.helpers import by_key, ingest_folders, profile, read_table

METRICS = [f.name for f in PROFILES if f.name not in ("sample_id", "error")]
CASES = {c.name: c for c in edge_cases()}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory, edge_dir):
    run = ingest_folders(tmp_path_factory.mktemp("run"), edge_dir, rows_per_shard=5)
    stats = profile(run)
    return run, stats


def test_rows_in_equal_ok_plus_rejected(profiled):
    run, stats = profiled
    samples = read_table(run, "samples").num_rows
    profiles = read_table(run, "profiles")
    rejects = read_table(run, "rejects")
    assert samples == len(CASES) == profiles.num_rows == stats["in"]
    assert stats["ok"] == profiles.column("error").null_count
    assert stats["rejected"] == rejects.num_rows
    assert stats["ok"] + stats["rejected"] == samples
    assert sorted(rejects.column("sample_id").to_pylist()) == sorted(
        r["sample_id"] for r in profiles.to_pylist() if r["error"]
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_bad_input_has_its_outcome(profiled, name):
    run, _ = profiled
    row = by_key(run, "profiles")[name]
    case = CASES[name]
    assert row["error"] == case.expected_error
    if case.expected_error is None:
        missing = [m for m in METRICS if row[m] is None]
        assert not missing, f"decodable image lacks metrics {missing}"
        for key, value in case.expected.items():
            assert row[key] == pytest.approx(value), key
    else:
        reject = by_key(run, "rejects")[name]
        assert reject["stage"] == "profile"
        assert reject["reason"] == case.expected_error
        assert reject["detail"]


def test_counters_by_reason(profiled):
    _, stats = profiled
    expected: dict[str, int] = {}
    for case in CASES.values():
        if case.expected_error:
            expected[case.expected_error] = expected.get(case.expected_error, 0) + 1
    assert stats["reasons"] == expected


def test_pixel_limit_applies_before_decoding(edge_dir):
    stage = ProfileStage(max_pixels=10_000)
    ok = stage.profile_one("id", "x", (edge_dir / "extreme_aspect.png").read_bytes())
    assert ok["error"] is None  # 4000 x 2 = 8,000 px
    big = stage.profile_one("id", "x", (edge_dir / "cmyk.jpg").read_bytes())
    assert big["error"] == "too_many_pixels"  # 128 x 96 = 12,288 px
    assert "max_pixels=10000" in big["error_detail"]


def test_missing_uri_is_read_failed(tmp_path):
    row = ProfileStage().profile_one("id", str(tmp_path / "gone.jpg"), None)
    assert row["error"] == "read_failed"
    assert "gone.jpg" in row["error_detail"]


def test_truncated_data_is_never_decoded_with_filler(edge_dir, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    row = ProfileStage().profile_one("id", "x", (edge_dir / "truncated.jpg").read_bytes())
    assert row["error"] == "decode_failed"
    assert "width" not in row


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"border_width": 0}, "border_width"),
        ({"max_pixels": 10**12}, "max_pixels"),
        ({"batch_rows": 0}, "batch_rows"),
        ({"jpeg_qualty": 80}, "jpeg_qualty"),
    ],
)
def test_bad_settings_fail_at_load_with_the_field_named(settings, field):
    with pytest.raises(ConfigError, match=rf"p\.toml: .*profile\.{field}"):
        from_dict(ProfileStage, settings, source="p.toml", path="profile")


@pytest.mark.parametrize("cut", [60, 100, 400, 2000])
def test_data_cut_anywhere_is_truncated(edge_dir, cut):
    """Cut inside the header (Pillow: 'Truncated File Read') or in the scan data."""
    data = (edge_dir / "jpeg_named.png").read_bytes()[:cut]
    assert ProfileStage().profile_one("id", "x", data)["error"] == "truncated"


def test_rgb_colour_key_is_composited_over_white():
    import io

    from PIL import Image

    im = Image.new("RGB", (16, 16), (0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=(0, 0, 0))  # tRNS: black is transparent
    row = ProfileStage().profile_one("id", "x", buf.getvalue())
    assert row["saturated_fraction"] == 1.0  # all-white after compositing
    assert row["color_cast"] < 1e-6
