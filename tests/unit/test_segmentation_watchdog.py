from services.segmentation.watchdog import StallDetector


def test_a_partition_that_keeps_up_or_has_nothing_waiting_is_never_stalled():
    d = StallDetector(timeout_s=30)
    d.check({"p0": 10, "p1": 0}, now=0)
    for t in range(0, 300, 10):
        d.handled("p0", 9 + t, now=t)
        assert d.check({"p0": 10 + t, "p1": 0}, now=t) == []


def test_messages_waiting_without_progress_past_the_timeout_is_a_stall_with_strikes():
    d = StallDetector(timeout_s=30)
    d.handled("p0", 99, now=0)
    assert d.check({"p0": 100}, now=0) == []
    assert d.check({"p0": 140}, now=20) == []
    stalls = d.check({"p0": 150}, now=35)
    assert [(s.tp, s.waiting, s.idle_s, s.strikes) for s in stalls] == [("p0", 50, 35, 1)]
    assert d.check({"p0": 150}, now=45)[0].strikes == 2
    d.handled("p0", 120, now=50)  # progress clears it
    assert d.check({"p0": 150}, now=55) == []


def test_a_partition_never_handled_here_stalls_when_new_messages_are_not_processed():
    d = StallDetector(timeout_s=30)
    assert d.check({"p3": 500}, now=0) == []  # first watched: its backlog is unknown
    assert d.check({"p3": 500}, now=40) == []  # nothing new arrived
    assert d.check({"p3": 510}, now=45) == []  # new, but the clock restarted at 40
    assert [s.waiting for s in d.check({"p3": 520}, now=80)] == [20]


def test_what_was_handled_before_a_reset_is_not_waiting_after_it():
    # A message handled just before a broker restart, its offset commit lost with the restart.
    d = StallDetector(timeout_s=30)
    d.check({"p2": 0}, now=0, committed={"p2": 0})
    d.handled("p2", 0, now=1)
    d.reset(now=5)
    assert d.check({"p2": 1}, now=5, committed={"p2": 0}) == []
    assert d.check({"p2": 1}, now=100, committed={"p2": 0}) == []


def test_a_committed_offset_past_what_was_handled_here_counts():
    # The partition went to another worker, which handled more, and came back.
    d = StallDetector(timeout_s=30)
    d.handled("p0", 9, now=0)
    d.check({"p0": 50}, now=0, committed={"p0": 50})
    assert d.check({"p0": 50}, now=100, committed={"p0": 50}) == []
    assert [s.waiting for s in d.check({"p0": 60}, now=200, committed={"p0": 50})] == [10]


def test_reset_and_revocation_forget_the_clocks():
    d = StallDetector(timeout_s=30)
    d.handled("p0", 0, now=0)
    d.check({"p0": 100}, now=0)
    d.reset(now=50)
    assert d.check({"p0": 100}, now=60) == []  # watched anew from 60
    d.check({}, now=61)  # revoked
    assert d.check({"p0": 200}, now=100) == []


def test_a_backlog_past_the_committed_offset_counts_for_a_partition_never_handled_here():
    d = StallDetector(timeout_s=30)
    assert d.check({"p1": 10}, now=0, committed={"p1": 4}) == []
    assert [s.waiting for s in d.check({"p1": 10}, now=31, committed={"p1": 4})] == [6]
    assert d.check({"p2": 10}, now=0, committed={"p2": 10}) == []
    assert d.check({"p2": 10}, now=31, committed={"p2": 10}) == []
