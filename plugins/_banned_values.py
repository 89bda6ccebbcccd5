r"""The values of the ``banned`` plugin's bans: addresses as compared, and which regular
expressions it runs on every CONNECT.

A ``clientid_re``/``username_re`` ban is searched in the event loop, against a value the
client chooses, and Python's ``re`` has no timeout. So the plugin searches the first
MAX_SUBJECT characters of a value only, and a pattern is refused (ValueError) when:

* it has more than MAX_PATTERN characters;
* ``re.compile`` cannot take it (also its OverflowError, ``a{4294967296}``, and
  RecursionError, deep nesting, which are no ``re.error``);
* a repeated group holds a quantifier or an alternative (``(a+)+``, ``(a*)*``,
  ``(a|aa)+``: exponential time);
* its worst case exceeds MAX_COST (polynomial time: ``a*a*a*b`` takes 30 s on 1024
  characters). The estimate is the product of each repetition's possible counts (at most
  MAX_SUBJECT + 1), MAX_SUBJECT for a backreference, the sum over alternatives, times
  MAX_SUBJECT start positions unless the pattern starts with ``^`` (not MULTILINE) or
  ``\A``. In practice: at most two unbounded quantifiers (``*``, ``+``, ``{n,}``),
  three after a leading ``^``; bounded ones count for their bound. What is accepted
  takes about 10 ms at worst.
"""

from __future__ import annotations

import importlib
import ipaddress
import math
import re
from collections.abc import Iterator
from typing import Any

MAX_PATTERN = 256  # characters of a pattern
MAX_SUBJECT = 256  # characters of a client id or user name a pattern is searched in
MAX_COST = 2 * 10**7  # the worst case estimate (module docstring): 10 ms or so

# The parser behind re.compile: private, but the one way to see a pattern's structure
# without a dependency (re._parser in Python 3.11 to 3.13; sre_parse before).
_sre: Any = importlib.import_module("re._parser")
_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalized_address(text: str) -> Address:
    """An IP address as compared: without IPv6 scope, IPv4-mapped IPv6 as IPv4 (ValueError)."""
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalized_network(text: str) -> Network:
    """A CIDR network as compared, host bits cleared, normalized as addresses (ValueError)."""
    network = ipaddress.ip_network(re.sub(r"%[^/]*", "", text), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _subpatterns(value: Any) -> Iterator[Any]:
    if isinstance(value, _sre.SubPattern):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _subpatterns(item)


def _ways(items: Any) -> int:
    """An upper bound on the ways a parsed pattern can match at one position, each
    repetition counted at most MAX_SUBJECT times; ValueError for a nested quantifier."""
    total = 1
    for op, av in items:
        if op in _REPEATS:
            _, high, sub = av
            body = _ways(sub)
            if high > 1 and body > 1:  # repeats what can match in more than one way
                raise ValueError(
                    "a repeated group holds a quantifier or an alternative (like (a+)+ or (a|aa)+):"
                    " it could take exponential time"
                )
            total *= (min(high, MAX_SUBJECT) + 1) * body
        elif op == _sre.GROUPREF:  # compares as many characters as the group holds
            total *= MAX_SUBJECT
        elif op == _sre.BRANCH:
            total *= sum(_ways(branch) for branch in av[1])
        else:  # groups, lookarounds, conditionals: their contents
            total *= math.prod(_ways(sub) for sub in _subpatterns(av))
    return total


def check_pattern(pattern: str) -> None:
    """ValueError saying why ``pattern`` is not run on every CONNECT (module docstring)."""
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"a pattern of {len(pattern)} characters, more than {MAX_PATTERN}")
    try:
        re.compile(pattern)
        tree = _sre.parse(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ValueError(f"not a regular expression ({exc})") from None
    starts = tree[0] if len(tree) else None
    anchored = starts == (_sre.AT, _sre.AT_BEGINNING_STRING) or (
        starts == (_sre.AT, _sre.AT_BEGINNING) and not tree.state.flags & re.MULTILINE
    )  # then re.search tries the first position only
    if (1 if anchored else MAX_SUBJECT) * _ways(tree) > MAX_COST:
        raise ValueError(
            "too many quantifiers: it could take too long on a long client id or user name"
            " (at most two unbounded ones such as * or +, three after a leading ^)"
        )
