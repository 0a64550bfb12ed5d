"""Tune's state reaches the search folder through whole-file writes: a search killed
while Tune copies its state there leaves the previous copy whole, and --resume reads it."""

import pickle

import pyarrow.fs as pafs

from mer_tune.hpo.whole_files import whole_file_filesystem


def test_a_file_being_written_leaves_the_old_copy_whole_until_it_is_complete(tmp_path):
    fs = whole_file_filesystem()
    state = tmp_path / "search_gen_state-1.json"
    state.write_bytes(b"old state, whole")
    out = fs.open_output_stream(str(state))
    out.write(b"new st")  # a kill here (no close) must not tear the file
    assert state.read_bytes() == b"old state, whole"
    out.write(b"ate, whole too")
    out.close()
    assert state.read_bytes() == b"new state, whole too"
    assert [p.name for p in tmp_path.iterdir()] == [state.name]  # no temporary left


def test_tune_can_copy_a_folder_through_it_and_pickle_it(tmp_path):
    staging, storage = tmp_path / "staging", tmp_path / "storage"
    (staging / "trial").mkdir(parents=True)
    (staging / "experiment_state.json").write_text("{}")
    (staging / "trial" / "result.json").write_bytes(b"x" * 100_000)
    fs = pickle.loads(pickle.dumps(whole_file_filesystem()))  # Tune pickles its run config
    pafs.copy_files(str(staging), str(storage), destination_filesystem=fs)
    pafs.copy_files(str(staging), str(storage), destination_filesystem=fs)  # over the old
    assert (storage / "experiment_state.json").read_text() == "{}"
    assert (storage / "trial" / "result.json").stat().st_size == 100_000
    assert sorted(p.name for p in storage.rglob("*")) == [
        "experiment_state.json",
        "result.json",
        "trial",
    ]


def test_an_experiment_state_read_while_tune_rewrote_it_is_dropped(tmp_path):
    fs = whole_file_filesystem()
    state = tmp_path / "experiment_state-2026-12-05_03-10-13.json"
    state.write_text('{"trial_data": []}')
    with fs.open_output_stream(str(state)) as out:
        out.write(b'{"trial_data": [["{\\"trial_id\\": ')  # half of Tune's rewrite
    assert state.read_text() == '{"trial_data": []}'
    with fs.open_output_stream(str(state)) as out:
        out.write(b'{"trial_data": [1]}')
    assert state.read_text() == '{"trial_data": [1]}'
    assert [p.name for p in tmp_path.iterdir()] == [state.name]
