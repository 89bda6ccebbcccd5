"""Tests for ternmq.kernel.routing.topics: validation, matching (MQTT 5 §4.7) and the subscription trie."""

import random
from collections import Counter

import pytest

from ternmq.kernel.routing.topics import (
    SubscriptionTrie,
    TopicError,
    parse_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

NAME_INVALID = 0x90
FILTER_INVALID = 0x8F


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "/",
        "//",
        "a/b",
        "/finance",
        "finance/",
        "a//b",
        "sport/tennis/player1",
        "Accounts payable",
        "$SYS/monitor/Clients",
        "$share/g/a",
        "é/ü/日本",
        "x" * 65535,
        "€" * 21845,  # 3 UTF-8 bytes each: exactly 65535 bytes
    ],
)
def test_valid_topic_names(name):
    validate_topic_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "+",
        "#",
        "a/+",
        "a/#",
        "+/a",
        "a+b",
        "sport/tennis#",
        "a\x00b",
        "\x00",
        "x" * 65536,
        "€" * 21846,  # 65538 bytes, though only 21846 characters
        "\ud800" * 20000,  # lone surrogates cannot be encoded as UTF-8
    ],
)
def test_invalid_topic_names(name):
    with pytest.raises(TopicError) as info:
        validate_topic_name(name)
    assert info.value.reason_code == NAME_INVALID
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "a",
        "#",
        "+",
        "/",
        "a/#",
        "/#",
        "+/#",
        "+/+",
        "/+",
        "a/+/b",
        "a//b",
        "sport/tennis/player1/#",
        "sport/+/player1",
        "$SYS/#",
        "$share",  # not "$share/": a plain filter
        "$sharex/a",
        "$share/g/a/b",
        "$share/g/#",
        "$share/g/+/x",
        "$share/g/$SYS/#",
        "$share/g//",
        "$share/group.1/a",
        "x" * 65535,
    ],
)
def test_valid_topic_filters(topic_filter):
    validate_topic_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "",
        "a/#/b",
        "#/a",
        "#/",
        "##",
        "a#",
        "sport/tennis#",
        "+a",
        "a+",
        "a/+b/c",
        "++",
        "a\x00",
        "x" * 65536,
        "€" * 21846,
        "$share/",
        "$share/g",
        "$share/g/",
        "$share//a",
        "$share/g+/a",
        "$share/+/a",
        "$share/#/a",
        "$share/g#/a",
        "$share/g/a#",
        "$share/g/a/#/b",
        "$share/g/+x",
        "$share/g/a\x00",
        "$share/g\x00/a",
        "$share/g/" + "x" * 65535,  # the whole filter is too long
    ],
)
def test_invalid_topic_filters(topic_filter):
    with pytest.raises(TopicError) as info:
        validate_topic_filter(topic_filter)
    assert info.value.reason_code == FILTER_INVALID


@pytest.mark.parametrize(
    ("topic", "max_levels", "ok"),
    [("a/b/c", 0, True), ("a/b/c", 3, True), ("a/b/c", 2, False), ("/", 2, True), ("/", 1, False)],
)
def test_topic_name_level_limit(topic, max_levels, ok):
    if ok:
        validate_topic_name(topic, max_levels)
    else:
        with pytest.raises(TopicError) as info:
            validate_topic_name(topic, max_levels)
        assert info.value.reason_code == NAME_INVALID


@pytest.mark.parametrize(
    ("topic_filter", "max_levels", "ok"),
    [
        ("a/+/#", 0, True),
        ("a/+/#", 3, True),
        ("a/+/#", 2, False),
        ("$share/g/a/b", 2, True),  # the inner filter's levels count
        ("$share/g/a/b", 1, False),
        ("$share/g/#", 1, True),
    ],
)
def test_topic_filter_level_limit(topic_filter, max_levels, ok):
    if ok:
        validate_topic_filter(topic_filter, max_levels)
    else:
        with pytest.raises(TopicError) as info:
            validate_topic_filter(topic_filter, max_levels)
        assert info.value.reason_code == FILTER_INVALID


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/consumer1/sport/tennis/+", ("consumer1", "sport/tennis/+")),
        ("$share/g/#", ("g", "#")),
        ("$share/g//", ("g", "/")),
        ("$share/g/$share/h/x", ("g", "$share/h/x")),
        ("a/b", (None, "a/b")),
        ("$share", (None, "$share")),
        ("$sharex/g/a", (None, "$sharex/g/a")),
        ("#", (None, "#")),
    ],
)
def test_parse_shared(topic_filter, expected):
    assert parse_shared(topic_filter) == expected


# --------------------------------------------------------------------------- matching

MATCH_TABLE = [
    # §4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/tennis/player1/#", "sport/tennis", False),
    ("sport/#", "sport", True),
    ("sport/#", "sport/", True),
    ("sport/#", "sports", False),
    ("#", "sport/tennis/player1", True),
    ("#", "a", True),
    ("#", "/", True),
    ("#", "/finance", True),
    # §4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/tennis/+", "sport/tennis", False),
    ("sport/tennis/+", "sport/tennis/", True),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+", "finance", True),
    ("+", "/finance", False),
    ("+", "$", False),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("/+", "finance", False),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("+/tennis/#", "sport/tennis", True),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("sport/+/player1", "sport/tennis/player2", False),
    ("sport/+/player1", "sport//player1", True),
    ("+/#", "a", True),
    ("+/#", "a/b/c", True),
    ("a/+/#", "a", False),
    ("a/+/#", "a/b", True),
    # empty levels and leading/trailing "/"
    ("a//b", "a//b", True),
    ("a//b", "a/b", False),
    ("a/+/b", "a//b", True),
    ("/finance", "finance", False),
    ("finance", "/finance", False),
    ("/", "/", True),
    ("+/+", "/", True),
    ("/#", "/", True),
    ("/#", "/a/b", True),
    ("/#", "a", False),
    # exact matching is case and whitespace sensitive
    ("ACCOUNTS", "Accounts", False),
    ("Accounts payable", "Accounts payable", True),
    ("Accounts payable", "Accounts  payable", False),
    ("a/b/c", "a/b/c", True),
    ("a/b/c", "a/b", False),
    ("a/b", "a/b/c", False),
    # §4.7.2 topics beginning with "$"
    ("#", "$SYS/monitor/Clients", False),
    ("#", "$SYS", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/+/Clients", "$SYS/monitor/Clients", True),
    ("$SYS/+", "$SYS", False),
    ("a/+", "a/$x", True),  # only the first level is special
    ("a/#", "a/$x/y", True),
    ("$", "$", True),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCH_TABLE)
def test_topic_matches(topic_filter, topic, expected):
    validate_topic_filter(topic_filter)
    validate_topic_name(topic)
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCH_TABLE)
def test_trie_match_table(topic_filter, topic, expected):
    trie = SubscriptionTrie()
    trie.add(topic_filter, "c", 1)
    trie.add("$share/g/" + topic_filter, "s", 2)
    plain, shared = trie.match(topic)
    assert plain == ([("c", 1)] if expected else [])
    assert shared == ({("g", topic_filter): [("s", 2)]} if expected else {})


# --------------------------------------------------------------------------- trie


def _empty(trie):
    root = trie._root
    return not root.children and root.plus is None and root.hash is None


def test_add_replace_remove():
    trie = SubscriptionTrie()
    assert trie.add("a/b", "c1", 0) is True
    assert trie.add("a/b", "c1", 1) is False  # replaced: options updated
    assert len(trie) == 1
    assert trie.match("a/b") == ([("c1", 1)], {})
    assert trie.filters_of("c1") == {"a/b": 1}
    assert trie.remove("a/b", "c2") is False
    assert trie.remove("a/c", "c1") is False
    assert trie.remove("a", "c1") is False  # an intermediate node, no subscription
    assert trie.remove("a/b/c", "c1") is False
    assert trie.remove("a/b", "c1") is True
    assert trie.remove("a/b", "c1") is False
    assert len(trie) == 0
    assert trie.count_filters() == 0
    assert trie.match("a/b") == ([], {})
    assert trie.filters_of("c1") == {}
    assert _empty(trie)


def test_several_keys_one_filter_in_insertion_order():
    trie = SubscriptionTrie()
    for key in ("z", "a", "m"):
        assert trie.add("t/+", key, key.upper())
    trie.add("t/+", "a", "A2")  # replacing keeps the position
    assert trie.match("t/x") == ([("z", "Z"), ("a", "A2"), ("m", "M")], {})
    assert len(trie) == 3
    assert trie.count_filters() == 1
    assert trie.remove("t/+", "a")
    assert trie.match("t/x") == ([("z", "Z"), ("m", "M")], {})


def test_one_key_several_matching_filters():
    trie = SubscriptionTrie()
    filters = ["a/b", "a/+", "a/#", "#", "+/b", "+/+", "a/b/#", "a/c", "b/#"]
    for i, f in enumerate(filters):
        assert trie.add(f, "k", i)
    plain, shared = trie.match("a/b")
    assert shared == {}
    assert sorted(plain) == [("k", i) for i in range(7)]
    assert trie.filters_of("k") == {f: i for i, f in enumerate(filters)}
    assert len(trie) == len(filters) == trie.count_filters()


def test_match_is_deterministic_and_returns_fresh_lists():
    trie = SubscriptionTrie()
    trie.add("a/+", "k1", 1)
    trie.add("$share/g/a/+", "k2", 2)
    first = trie.match("a/b")
    assert trie.match("a/b") == first
    first[0].append(("x", 0))
    first[1][("g", "a/+")].append(("x", 0))
    assert trie.match("a/b") == ([("k1", 1)], {("g", "a/+"): [("k2", 2)]})
    trie.filters_of("k1")["zzz"] = 0
    assert trie.filters_of("k1") == {"a/+": 1}


def test_shared_groups_returned_per_group():
    trie = SubscriptionTrie()
    assert trie.add("$share/g1/a/+", "c1", 1)
    assert trie.add("$share/g1/a/+", "c2", 2)
    assert trie.add("$share/g2/a/+", "c1", 3)
    assert trie.add("$share/g1/a/#", "c3", 4)
    assert trie.add("a/+", "c1", 5)  # a plain subscription to the same inner filter
    assert not trie.add("$share/g1/a/+", "c2", 6)
    assert len(trie) == 5
    assert trie.count_filters() == 4
    plain, shared = trie.match("a/b")
    assert plain == [("c1", 5)]
    assert shared == {
        ("g1", "a/+"): [("c1", 1), ("c2", 6)],
        ("g2", "a/+"): [("c1", 3)],
        ("g1", "a/#"): [("c3", 4)],
    }
    assert trie.match("a") == ([], {("g1", "a/#"): [("c3", 4)]})
    assert trie.filters_of("c1") == {"$share/g1/a/+": 1, "$share/g2/a/+": 3, "a/+": 5}
    assert trie.remove("$share/g2/a/+", "c1")
    assert not trie.remove("$share/g2/a/+", "c1")
    assert not trie.remove("$share/g3/a/+", "c1")
    assert not trie.remove("$share/g1/a/+", "c3")
    assert set(trie.match("a/b")[1]) == {("g1", "a/+"), ("g1", "a/#")}
    assert trie.count_filters() == 3


def test_dollar_topics_in_trie():
    trie = SubscriptionTrie()
    for f in ("#", "+/x", "+/#", "$SYS/#", "$SYS/+", "$SYS/x"):
        trie.add(f, f, None)
    trie.add("$share/g/#", "s", None)
    trie.add("$share/g/$SYS/#", "s", None)
    plain, shared = trie.match("$SYS/x")
    assert sorted(k for k, _ in plain) == ["$SYS/#", "$SYS/+", "$SYS/x"]
    assert list(shared) == [("g", "$SYS/#")]
    plain, shared = trie.match("SYS/x")
    assert sorted(k for k, _ in plain) == ["#", "+/#", "+/x"]
    assert list(shared) == [("g", "#")]


def test_remove_key():
    trie = SubscriptionTrie()
    trie.add("a/b", "k1", 1)
    trie.add("a/#", "k1", 2)
    trie.add("$share/g/a/b", "k1", 3)
    trie.add("a/b", "k2", 4)
    assert trie.remove_key("k1") == 3
    assert trie.remove_key("k1") == 0
    assert trie.remove_key("nobody") == 0
    assert trie.filters_of("k1") == {}
    assert trie.match("a/b") == ([("k2", 4)], {})
    assert len(trie) == 1
    assert trie.count_filters() == 1
    assert trie.remove_key("k2") == 1
    assert _empty(trie)


def test_pruning():
    trie = SubscriptionTrie()
    trie.add("a/b/c/d", "k", 0)
    trie.add("a/b/x", "k", 0)
    trie.add("a/+/#", "k2", 0)
    trie.add("$share/g/+/+/+", "k3", 0)
    trie.remove("a/b/c/d", "k")
    b = trie._root.children["a"].children["b"]
    assert list(b.children) == ["x"]  # "c" and "d" pruned, the sibling kept
    trie.remove("a/b/x", "k")
    assert list(trie._root.children["a"].children) == []
    assert trie._root.children["a"].plus is not None
    trie.remove("a/+/#", "k2")
    assert "a" not in trie._root.children
    trie.remove("$share/g/+/+/+", "k3")
    assert _empty(trie)
    # churn does not grow the trie
    for i in range(50):
        trie.add(f"t/{i}/+", i, i)
        trie.add(f"$share/g{i}/t/{i}/#", i, i)
    for i in range(50):
        assert trie.remove_key(i) == 2
    assert _empty(trie) and len(trie) == 0 and trie.count_filters() == 0


def test_trie_agrees_with_topic_matches():
    rng = random.Random(20240611)
    filter_levels = ["a", "b", "", "$x", "+", "#"]
    topic_levels = ["a", "b", "", "$x"]

    def random_filter():
        levels = [rng.choice(filter_levels) for _ in range(rng.randint(1, 4))]
        levels = [lvl for lvl in levels[:-1] if lvl != "#"] + levels[-1:]
        return "/".join(levels) or "#"

    trie = SubscriptionTrie()
    stored: dict[tuple[str, int], int] = {}
    for i in range(200):
        f = random_filter()
        key = rng.randrange(10)
        group = rng.choice([None, None, "g", "h"])
        full = f if group is None else f"$share/{group}/{f}"
        validate_topic_filter(full)
        assert trie.add(full, key, i) is ((full, key) not in stored)
        stored[(full, key)] = i
        if rng.random() < 0.2:  # some churn
            victim = rng.choice(list(stored))
            assert trie.remove(*victim)
            del stored[victim]
    assert len(trie) == len(stored)
    assert trie.count_filters() == len({f for f, _ in stored})

    hits = 0
    for _ in range(300):
        topic = "/".join(rng.choice(topic_levels) for _ in range(rng.randint(1, 5))) or "b"
        validate_topic_name(topic)
        plain, shared = trie.match(topic)
        want_plain = Counter()
        want_shared: dict[tuple[str, str], list] = {}
        for (full, key), value in stored.items():
            group, inner = parse_shared(full)
            if topic_matches(inner, topic):
                if group is None:
                    want_plain[(key, value)] += 1
                else:
                    want_shared.setdefault((group, inner), []).append((key, value))
        assert Counter(plain) == want_plain
        assert {k: sorted(v) for k, v in shared.items()} == {k: sorted(v) for k, v in want_shared.items()}
        hits += len(plain) + sum(len(v) for v in shared.values())
    # the random (filter, topic) pairs are neither nearly all hits nor nearly all misses
    assert 0.05 < hits / (300 * len(stored)) < 0.5
    for key in range(10):
        trie.remove_key(key)
    assert _empty(trie) and len(trie) == 0
