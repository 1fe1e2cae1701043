"""Settings: every variable keeps its name and its default, declared once (fracture.config.setting)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from fracture.config import DicomPeer, Settings, get_settings

# The variables and their defaults as they were before the defaults were declared once: none may change by
# accident. On purpose since: REAPER_INTERVAL_S 60 -> 20 (with the heartbeats, work whose worker died is failed
# within a minute); HEARTBEAT_INTERVAL_S, HEARTBEAT_STALE_S and TRUSTED_PROXY_HOPS are new; BATCH_SIZE 32 -> None
# (by the device: still 32 on a CPU, tests/test_gpu_decode.py), DECODE_THREADS and DECODER are new.
DEFAULTS = {
    "CHUNK_SIZE": 64, "BATCH_SIZE": None, "DECODE_THREADS": None, "DECODER": "auto",
    "MAX_UPLOAD_BYTES": 2 * 1024**3, "MAX_FILES_PER_JOB": 20_000,
    "MAX_FORM_PARTS": 25_000, "MAX_ZIP_MEMBERS": 50_000, "MAX_ZIP_TOTAL_BYTES": 8 * 1024**3, "MAX_ZIP_RATIO": 200,
    "MAX_IMAGE_PIXELS": 64_000_000, "TASK_TIME_LIMIT_S": 900, "WORKER_MAX_MEMORY_KB": 4_000_000,
    "BROKER_VISIBILITY_TIMEOUT_S": 3600, "REAPER_STALE_S": 300, "REAPER_INTERVAL_S": 20, "SCHEDULES_TICK_S": 60,
    "MAX_CHUNK_ATTEMPTS": 3, "TRAINING_TIME_LIMIT_S": 6 * 3600, "SECRET_KEY": "dev-only-change-me",
    "SESSION_COOKIE_SECURE": False, "PROMOTE_MIN_SENSITIVITY": 0.95, "PROMOTE_MIN_SPECIFICITY": 0.90,
    "PROMOTE_AUC_TOLERANCE": 0.01, "PROMOTE_MIN_PER_CLASS": 50, "SHOW_PATIENT_IDENTIFIERS": False,
    "THUMBNAILS": True, "UNCERTAIN_MARGIN": 0.1, "HEATMAPS_ABOVE_THRESHOLD": False,
    "DICOM_PORT": 0, "DICOM_AE_TITLE": "FRACTURE", "DICOM_STUDY_QUIET_S": 30, "DICOM_OWNER": "dicom-node",
    "DICOM_SEND_HEATMAPS": True, "METRICS_TOKEN": "", "LOG_FORMAT": "text",
    "HEARTBEAT_INTERVAL_S": 10, "HEARTBEAT_STALE_S": 30, "TRUSTED_PROXY_HOPS": 0,
}


def _by_variable(settings: Settings) -> dict[str, object]:
    return {f.metadata["env"]: getattr(settings, f.name) for f in fields(Settings) if "env" in f.metadata}


def test_unset_or_empty_variables_keep_the_defaults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    home = {"FRACTURE_HOME": str(tmp_path)}
    assert _by_variable(get_settings(home)) == DEFAULTS
    assert _by_variable(get_settings({**home, **dict.fromkeys(DEFAULTS, "")})) == DEFAULTS
    direct = Settings(home=tmp_path, database_url="sqlite://", broker_url="sqla+sqlite://", storage_dir=tmp_path)
    assert _by_variable(direct) == DEFAULTS  # constructed in code: the same defaults


@pytest.mark.parametrize(("name", "raw", "value"), [
    ("CHUNK_SIZE", "16", 16), ("PROMOTE_MIN_SENSITIVITY", "0.9", 0.9), ("SECRET_KEY", "s3cret", "s3cret"),
    ("SESSION_COOKIE_SECURE", " Yes ", True), ("SESSION_COOKIE_SECURE", "maybe", False),
    ("THUMBNAILS", "off", False), ("THUMBNAILS", "0", False), ("THUMBNAILS", "maybe", True),
    ("SCHEDULES_TICK_S", "0", 1),  # at least a second
    ("BATCH_SIZE", "512", 512), ("DECODE_THREADS", "16", 16), ("DECODER", " Pillow ", "pillow"),
])
def test_variables_are_read_as_the_defaults_type(tmp_path, name: str, raw: str, value: object) -> None:  # type: ignore[no-untyped-def]
    assert _by_variable(get_settings({"FRACTURE_HOME": str(tmp_path), name: raw}))[name] == value


def test_the_secret_key_is_not_shown(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert "s3cret" not in repr(get_settings({"FRACTURE_HOME": str(tmp_path), "SECRET_KEY": "s3cret"}))


def test_dicom_peers_and_result_destinations_are_parsed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings({"FRACTURE_HOME": str(tmp_path), "DICOM_PEERS": " PACS@10.0.0.5:104, CR 1@[::1]:11112,",
                             "DICOM_SEND_RESULTS_TO": "PACS, ", "DICOM_AE_TITLE": " NODE "})
    assert settings.dicom_peers == (DicomPeer("PACS", "10.0.0.5", 104), DicomPeer("CR 1", "::1", 11112))
    assert settings.dicom_send_results_to == ("PACS",)
    assert settings.dicom_ae_title == "NODE"
    unset = get_settings({"FRACTURE_HOME": str(tmp_path)})
    assert (unset.dicom_port, unset.dicom_peers, unset.dicom_send_results_to) == (0, (), ())


@pytest.mark.parametrize(("name", "raw"), [
    ("DICOM_PEERS", "PACS"), ("DICOM_PEERS", "PACS@host"), ("DICOM_PEERS", "@host:104"),
    ("DICOM_PEERS", "PACS@host:0"), ("DICOM_PEERS", "A\\B@host:104"), ("DICOM_PEERS", "SEVENTEEN_LETTERS@h:1"),
    ("DICOM_AE_TITLE", "SEVENTEEN_LETTERS"), ("DICOM_SEND_RESULTS_TO", "A\\B"),
])
def test_a_malformed_dicom_setting_is_refused_naming_it(tmp_path, name: str, raw: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=name):
        get_settings({"FRACTURE_HOME": str(tmp_path), name: raw})


def test_dicomweb_peers_are_named_urls() -> None:
    from fracture.config import get_settings

    settings = get_settings({"DICOMWEB_PEERS": "PACSWEB=https://pacs.example/dicom-web/, ARCHIVE=http://h:8042/dw"})
    assert settings.dicomweb_peers == (("PACSWEB", "https://pacs.example/dicom-web"), ("ARCHIVE", "http://h:8042/dw"))
    for bad in ("PACSWEB", "PACSWEB=ftp://x", "=http://x", "A\\B=http://x"):
        with pytest.raises(ValueError, match="DICOMWEB_PEERS"):
            get_settings({"DICOMWEB_PEERS": bad})


@pytest.mark.parametrize(("name", "raw"), [("DECODER", "nvjpeg"), ("BATCH_SIZE", "0"), ("DECODE_THREADS", "-1")])
def test_a_malformed_serving_setting_is_refused_naming_it(tmp_path, name: str, raw: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=name):
        get_settings({"FRACTURE_HOME": str(tmp_path), name: raw})
