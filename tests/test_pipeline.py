"""PromptLoader: seeded epochs, exact resume in a new process, disjoint host shards; data code imports no jax."""

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tooln1_jax.data.pipeline import PromptLoader

REPO = Path(__file__).resolve().parent.parent
RECORDS = [{"id": f"r{i}"} for i in range(24)]


def ids(batches):
    return [[r["id"] for r in batch] for batch in batches]


def take(loader, n):
    return ids(next(loader) for _ in range(n))


def test_same_seed_same_batches_and_each_epoch_is_a_permutation():
    a = take(PromptLoader(RECORDS, batch_size=4, seed=7), 12)
    b = take(PromptLoader(RECORDS, batch_size=4, seed=7), 12)
    assert a == b
    assert a != take(PromptLoader(RECORDS, batch_size=4, seed=8), 12)
    flat = [i for batch in a for i in batch]
    epoch0, epoch1 = flat[:24], flat[24:]
    assert sorted(epoch0) == sorted(epoch1) == sorted(r["id"] for r in RECORDS)
    assert epoch0 != epoch1  # reshuffled per epoch
    assert epoch0 != [r["id"] for r in RECORDS]  # shuffled at all


def test_no_shuffle_keeps_the_order():
    loader = PromptLoader(RECORDS, batch_size=5, seed=0, shuffle=False, num_epochs=1)
    assert ids(loader) == [[f"r{i}" for i in range(b, b + 5)] for b in range(0, 20, 5)]
    assert loader.dropped_at_end == 4 and loader.num_batches == 4


def test_finite_epochs_end_and_report_the_unserved_tail(caplog):
    with caplog.at_level(logging.WARNING, logger="tooln1_jax.data.pipeline"):
        loader = PromptLoader(RECORDS[:10], batch_size=3, seed=1, num_epochs=2)
    assert "2 of 20 record positions" in caplog.text
    batches = ids(loader)
    assert len(batches) == loader.num_batches == 6 and all(len(b) == 3 for b in batches)
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == [f"r{i}" for i in range(10)]  # batches run across the epoch boundary
    assert loader.epoch == pytest.approx(1.8)


def test_two_hosts_get_disjoint_shards_that_cover_the_data():
    hosts = [PromptLoader(RECORDS, batch_size=3, seed=3, num_epochs=1, shard_index=i, shard_count=2)
             for i in range(2)]
    shards = [ids(h) for h in hosts]
    assert [len(s) for s in shards] == [4, 4]  # same number of steps on every host
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen)) == 24
    # Step k of all hosts together is the k-th global batch of the single-host stream.
    single = [i for b in ids(PromptLoader(RECORDS, batch_size=6, seed=3, num_epochs=1)) for i in b]
    for k in range(4):
        assert sorted(shards[0][k] + shards[1][k]) == sorted(single[6 * k:6 * k + 6])


def test_uneven_hosts_stay_in_lockstep():
    hosts = [PromptLoader(RECORDS[:11], batch_size=2, seed=0, num_epochs=1, shard_index=i, shard_count=3)
             for i in range(3)]
    assert [len(ids(h)) for h in hosts] == [1, 1, 1]
    assert hosts[0].dropped_at_end == 5


RESUME_SCRIPT = """
import json, sys
from tooln1_jax.data.pipeline import PromptLoader
records = [{"id": f"r{i}"} for i in range(24)]
loader = PromptLoader(records, batch_size=5, seed=11, shard_index=1, shard_count=2)
loader.set_state(json.loads(sys.argv[1]))
print(json.dumps({"step": loader.step, "batches": [[r["id"] for r in next(loader)] for _ in range(8)]}))
"""


def test_state_restored_in_a_new_process_continues_exactly():
    def loader():
        return PromptLoader(RECORDS, batch_size=5, seed=11, shard_index=1, shard_count=2)

    uninterrupted = take(loader(), 10)
    interrupted = loader()
    take(interrupted, 2)  # mid-epoch: 2 steps x 10 of the 24 records
    state = json.loads(json.dumps(interrupted.get_state()))  # JSON-serialisable
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(RESUME_SCRIPT), json.dumps(state)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    resumed = json.loads(result.stdout)
    assert resumed["step"] == 2
    assert resumed["batches"] == uninterrupted[2:10]


def test_state_from_other_settings_is_refused():
    state = PromptLoader(RECORDS, batch_size=4, seed=1).get_state()
    with pytest.raises(ValueError, match="saved with batch_size=4, this loader has batch_size=8"):
        PromptLoader(RECORDS, batch_size=8, seed=1).set_state(state)
    with pytest.raises(ValueError, match="saved with num_records=24, this loader has num_records=23"):
        PromptLoader(RECORDS[:23], batch_size=4, seed=1).set_state(state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one record"):
        PromptLoader([], batch_size=1, seed=0)
    with pytest.raises(ValueError, match="shard_index < shard_count"):
        PromptLoader(RECORDS, batch_size=1, seed=0, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="num_epochs"):
        PromptLoader(RECORDS, batch_size=1, seed=0, num_epochs=0)


def test_data_and_reward_modules_do_not_import_jax():
    code = ("import sys\n"
            "import tooln1_jax.data.records, tooln1_jax.data.prompts, tooln1_jax.data.prepare\n"
            "import tooln1_jax.data.pipeline, tooln1_jax.rewards.toolcall\n"
            "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'flax', 'grain'))))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
