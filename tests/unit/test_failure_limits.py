"""The pure part of the failure limits: a request refused by one subject takes from none."""

from services.issuance.ratelimit import Refused, Subject, judge

C, S, D = Subject("customer", "c"), Subject("shopper", "s"), Subject("customer", "d")


def test_a_request_is_refused_by_its_longest_wait_and_gives_back_what_it_took():
    answers, undo = judge([(C, S), (D,), (), (C,)], [0, 7, 0, 3])
    assert answers == [Refused(7, "shopper"), None, None, Refused(3, "customer")]
    assert undo == ["c"]  # the first request's customer token; the refused last one took nothing
