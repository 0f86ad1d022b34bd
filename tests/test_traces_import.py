"""``trace import``: both JSON-lines layouts, warm-up dropping, merging per-layer logs, and counted drops."""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from moe_prefetch.cli import main
from traces.fileio import InputError
from traces.importer import MIN_WARMUP_RUN, ImportOptions, import_logs
from traces.shapes import KNOWN_SHAPES
from traces.trace import read_trace, write_trace

REAL_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "real-traces"


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    if path.suffix == ".xz":
        path.write_bytes(lzma.compress(text.encode()))
    elif path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def flat_row(problem, layer, token, experts, probs=None, dataset="gsm8k"):
    probs = probs or [round(1.0 - 0.1 * i, 3) for i in range(len(experts))]
    return {
        "dataset": dataset,
        "problem_id": problem,
        "layer": layer,
        "experts": experts,
        "gating_probs": probs,
        "token_idx": token,
    }


def route(token, layer, ids, req="r1", weights=None):
    weights = weights or [round(0.5 - 0.1 * i, 3) for i in range(len(ids))]
    return {
        "type": "route",
        "req_id": req,
        "token_idx": token,
        "layer": layer,
        "topk_ids": ids,
        "topk_weights": weights,
    }


META = {
    "type": "meta",
    "model_id": "someone/tiny-moe",
    "vllm_version": "0.11.2",
    "device": "cuda",
    "top_k": 2,
}


def flat_log(tmp_path: Path) -> Path:
    rows = []
    for layer in range(2):  # recorder writes layer by layer
        for problem, tokens in ((0, 3), (1, 2)):
            for token in range(tokens):
                if (problem, token, layer) == (1, 1, 1):
                    continue  # this token lacks layer 1
                rows.append(flat_row(problem, layer, token, [(token + layer) % 8, (token + layer + 3) % 8]))
    return write_jsonl(tmp_path / "flat.jsonl", rows)


def test_flat_layout_maps_problems_to_sequences_and_counts_incomplete_tokens(tmp_path):
    trace, report = import_logs([flat_log(tmp_path)], ImportOptions())
    assert report.layouts == {"flat.jsonl": "flat"}
    assert trace.num_tokens == 4 and trace.num_layers == 2 and trace.top_k == 2
    assert trace.seq_id.tolist() == [0, 0, 0, 1]
    assert trace.pos.tolist() == [0, 1, 2, 0]
    assert trace.experts[1, 1].tolist() == [2, 5]
    assert (report.incomplete_tokens, report.incomplete_rows) == (1, 1)
    assert any("k=2 inferred" in d for d in report.decisions)
    assert trace.metadata.provenance.origin == "imported"
    assert trace.metadata.provenance.source == "flat.jsonl"
    write_trace(trace, tmp_path / "t.parquet")
    assert read_trace(tmp_path / "t.parquet").num_tokens == 4


def test_num_experts_is_inferred_from_largest_id_and_said_so(tmp_path):
    trace, report = import_logs([flat_log(tmp_path)], ImportOptions())
    assert trace.num_experts == int(trace.experts.max()) + 1
    assert any(f"E={trace.num_experts} inferred from the largest expert id" in d for d in report.decisions)
    trace, report = import_logs([flat_log(tmp_path)], ImportOptions(num_experts=16))
    assert trace.num_experts == 16
    assert not any("E=" in d for d in report.decisions)


def typed_log(path: Path, layer: int, warmup: int = 40, warmup_ids=(3, 1)) -> Path:
    rows: list[dict | str] = [dict(META, layers_logged=[layer])]
    rows += [route(t, layer, list(warmup_ids)) for t in range(warmup)]  # dummy pass, identical routing
    rows += [route(t, layer, [t % 5, 5 + (t + layer) % 3]) for t in range(6)]  # prefill pass of 6 tokens
    for _step in range(3):  # decode passes of 2 tokens: token_idx restarts at every pass
        rows += [route(t, layer, [(t + layer) % 4, 4 + t]) for t in range(2)]
    return write_jsonl(path, rows)


def test_typed_layout_drops_warmup_and_splits_forward_passes(tmp_path):
    trace, report = import_logs([typed_log(tmp_path / "l0.jsonl", 0)], ImportOptions())
    assert report.warmup_dropped == {"l0.jsonl layer 0": 40}
    assert trace.num_tokens == 12
    assert np.diff(trace.seq_starts).tolist() == [6, 2, 2, 2]
    assert any("k=2 from the log's meta line" in d for d in report.decisions)
    assert trace.metadata.provenance.software == {"vllm": "0.11.2"}
    assert "forward pass" in trace.metadata.provenance.notes


def test_consecutive_dummy_passes_with_different_routing_are_all_warmup(tmp_path):
    rows: list[dict | str] = [META]
    rows += [route(t, 0, [3, 1]) for t in range(32)] + [route(t, 0, [6, 2]) for t in range(MIN_WARMUP_RUN)]
    rows += [route(t, 0, [t % 3, 3 + t % 2]) for t in range(5)]
    trace, report = import_logs([write_jsonl(tmp_path / "w.jsonl", rows)], ImportOptions())
    assert report.warmup_dropped == {"w.jsonl layer 0": 32 + MIN_WARMUP_RUN}
    assert trace.num_tokens == 5


def test_short_identical_runs_are_real_tokens_not_warmup(tmp_path):
    rows: list[dict | str] = [META] + [route(t, 0, [3, 1]) for t in range(MIN_WARMUP_RUN - 1)]
    rows += [route(t, 0, [0, 2]) for t in range(MIN_WARMUP_RUN - 1, 40)]
    trace, report = import_logs([write_jsonl(tmp_path / "s.jsonl", rows)], ImportOptions())
    assert report.warmup_dropped == {}
    assert trace.num_tokens == 40


def test_explicit_warmup_count_overrides_detection(tmp_path):
    log = typed_log(tmp_path / "l0.jsonl", 0)
    trace, _ = import_logs([log], ImportOptions(drop_warmup=0))
    assert trace.num_tokens == 52
    trace, report = import_logs([log], ImportOptions(drop_warmup=46))
    assert report.warmup_dropped == {"l0.jsonl layer 0": 46}
    assert trace.num_tokens == 6


def test_per_layer_logs_merge_into_one_multi_layer_trace(tmp_path):
    logs = [typed_log(tmp_path / f"l{layer}.jsonl.xz", layer) for layer in (0, 5)]
    trace, report = import_logs(logs, ImportOptions())
    assert trace.metadata.model.moe_layers == (0, 5)
    assert trace.num_tokens == 12
    assert trace.experts[0, 1].tolist() == [0, 5 + 5 % 3]  # layer 5, prefill token 0
    assert report.incomplete_tokens == 0


def test_compressed_and_plain_logs_import_identically(tmp_path):
    plain = typed_log(tmp_path / "a.jsonl", 0)
    xz = typed_log(tmp_path / "a.jsonl.xz", 0)
    gz = typed_log(tmp_path / "a.jsonl.gz", 0)
    results = [import_logs([p], ImportOptions())[0] for p in (plain, xz, gz)]
    for other in results[1:]:
        assert np.array_equal(other.experts, results[0].experts)
        assert np.array_equal(other.weights, results[0].weights)


def test_malformed_rows_are_counted_by_reason_not_silently_dropped(tmp_path):
    good = [route(t, 0, [t % 4, 4 + t % 2]) for t in range(10)]
    bad: list[dict | str] = [
        "{not json",
        "[1, 2]",
        {"type": "route", "req_id": "r1", "layer": 0, "topk_ids": [1, 2], "topk_weights": [0.5, 0.4]},
        route(10, 0, ["a", 2]),
        route(11, 0, [1, 2, 3], weights=[0.3, 0.2, 0.1]),
        route(12, 0, [1, 1]),
        route(13, 0, [1, 2], weights=[0.5]),
        route(14, 0, [1, 99]),
        {"type": "debug", "msg": "hello"},
    ]
    rows = [META, *good[:5], *bad, *good[5:]]
    trace, report = import_logs([write_jsonl(tmp_path / "m.jsonl", rows)], ImportOptions(num_experts=8))
    assert report.malformed == {
        "not valid JSON": 1,
        "not a JSON object": 1,
        "missing field 'token_idx'": 1,
        "'topk_ids' is not a non-empty list of integers": 1,
        "list length is not top-k=2": 1,
        "an expert appears twice in 'topk_ids'": 1,
        "'topk_weights' and 'topk_ids' differ in length": 1,
        "expert id outside [0, 8)": 1,
    }
    assert report.other_row_types == {"debug": 1}
    printed = "\n".join(report.lines())
    assert "malformed: 1 rows dropped (not valid JSON)" in printed
    assert "skipped: 1 rows of type 'debug'" in printed
    assert trace.num_tokens == 10


def test_duplicate_rows_keep_the_first_and_are_counted(tmp_path):
    rows = [flat_row(0, 0, t, [t, t + 1]) for t in range(4)] + [flat_row(0, 0, 2, [6, 7])]
    trace, report = import_logs([write_jsonl(tmp_path / "d.jsonl", rows)], ImportOptions())
    assert report.malformed == {"duplicate (sequence, token, layer) row; first kept": 1}
    assert trace.experts[2, 0].tolist() == [2, 3]


def test_known_model_id_fills_the_shape_and_checks_consistency(tmp_path):
    rows: list[dict | str] = [dict(META, model_id="allenai/OLMoE-1B-7B-0924", top_k=8, num_experts=64)]
    rows += [route(t, 3, [(t + i) % 64 for i in range(8)]) for t in range(5)]
    trace, report = import_logs([write_jsonl(tmp_path / "o.jsonl", rows)], ImportOptions())
    assert trace.metadata.model.bytes_per_expert == KNOWN_SHAPES["olmoe-1b-7b"].bytes_per_expert
    assert trace.metadata.model.moe_layers == (3,)
    assert any("partial trace: 1 of 16" in d for d in report.decisions)
    with pytest.raises(InputError, match="the logs have E=64, k=8 but model 'mistralai/Mixtral"):
        import_logs([tmp_path / "o.jsonl"], ImportOptions(model=KNOWN_SHAPES["mixtral-8x7b"]))


def test_meta_lines_that_disagree_are_an_input_error(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [META, route(0, 0, [1, 2])])
    b = write_jsonl(tmp_path / "b.jsonl", [dict(META, top_k=4), route(0, 1, [1, 2, 3, 4])])
    with pytest.raises(InputError, match=r"a.jsonl, b.jsonl: meta lines disagree on top_k: \[2, 4\]"):
        import_logs([a, b], ImportOptions())


def test_unknown_layout_is_a_one_line_input_error(tmp_path):
    log = write_jsonl(tmp_path / "x.jsonl", [{"tokens": [1, 2]}])
    with pytest.raises(InputError, match="line 1: cannot tell the row layout") as info:
        import_logs([log], ImportOptions())
    assert "\n" not in str(info.value)


def test_cli_import_writes_a_valid_trace_and_prints_the_summary(tmp_path, capsys):
    out = tmp_path / "out" / "t.parquet"
    code = main(["trace", "import", str(flat_log(tmp_path)), "--out", str(out), "--model-name", "tiny"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "incomplete: 1 tokens lack some logged layer; their 1 rows dropped" in printed
    assert "wrote" in printed and "4 tokens x 2 layers" in printed
    trace = read_trace(out)
    assert trace.metadata.model.name == "tiny"
    assert trace.metadata.provenance.command.startswith("moe-prefetch trace import ")
    assert "--model-name tiny" in trace.metadata.provenance.command


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "gpt-9"], "neither a known model"),
    ],
)
def test_cli_import_rejects_bad_options_in_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "t.parquet"
    assert main(["trace", "import", str(flat_log(tmp_path)), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_import_of_missing_or_corrupt_file_exits_2(tmp_path, capsys):
    assert main(["trace", "import", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "t.parquet")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err
    corrupt = tmp_path / "c.jsonl.xz"
    corrupt.write_bytes(lzma.compress(b'{"type": "meta"}\n' * 1000)[:50])
    assert main(["trace", "import", str(corrupt), "--out", str(tmp_path / "t.parquet")]) == 2
    err = capsys.readouterr().err
    assert "c.jsonl.xz: unreadable" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------ real third-party logs

needs_real = pytest.mark.skipif(not REAL_TRACES.is_dir(), reason="../shared/real-traces not present")


@needs_real
def test_real_mixtral_logs_import(tmp_path):
    logs = sorted(REAL_TRACES.glob("mixtral8x7b_*_routing.jsonl.xz"))
    trace, report = import_logs(logs, ImportOptions(model=KNOWN_SHAPES["mixtral-8x7b"]))
    assert report.rows_read == 7_889 + 10_779
    assert report.rows_kept + report.incomplete_rows == report.rows_read
    assert report.incomplete_tokens > 0 and not report.malformed
    assert (trace.num_layers, trace.num_experts, trace.top_k) == (32, 8, 2)
    assert len(trace.seq_starts) - 1 == 4  # two problems in each of two datasets
    write_trace(trace, tmp_path / "mixtral.parquet")
    assert read_trace(tmp_path / "mixtral.parquet").num_tokens == trace.num_tokens


@needs_real
def test_real_qwen_per_layer_logs_merge_after_the_documented_warmup(tmp_path):
    logs = sorted(REAL_TRACES.glob("qwen15moe_layer*_routes.jsonl.xz"))
    trace, report = import_logs(logs, ImportOptions())
    assert set(report.warmup_dropped.values()) == {8_192 + 256}
    assert trace.metadata.model.moe_layers == (0, 8, 12, 18, 23)
    assert (trace.num_experts, trace.top_k) == (60, 4)
    assert trace.num_tokens == 12_805 - 8_448 and report.incomplete_tokens == 0
    assert not (trace.experts[:, 0] == [43, 5, 7, 58]).all(axis=1).all()
    write_trace(trace, tmp_path / "qwen.parquet")
    assert read_trace(tmp_path / "qwen.parquet").num_layers == 5


@needs_real
def test_real_olmoe_log_drops_uniform_warmup(tmp_path):
    trace, report = import_logs([REAL_TRACES / "olmoe_layer0_routes.jsonl.xz"], ImportOptions())
    assert report.warmup_dropped == {"olmoe_layer0_routes.jsonl.xz layer 0": 2_048}
    assert (trace.num_experts, trace.top_k, trace.num_tokens) == (64, 8, 6_519 - 2_048)
    assert not np.allclose(trace.weights, 0.125)
    write_trace(trace, tmp_path / "olmoe.parquet")
    assert read_trace(tmp_path / "olmoe.parquet").num_tokens == 4_471
