"""Reading certification runs, without containers: verdicts, findings and the merged changes."""

from __future__ import annotations

from litecoder.certification import NOP, ORACLE, WRONG, certificate, rejection
from litecoder.records import CheckRun, WrongSolution
from litecoder.sandboxes.base import Change
from litecoder.stages.environment import merge_changes, repairable

WRONGS = [WrongSolution("skips the commit", "git add ."), WrongSolution("does nothing", "true")]


def runs(nop, oracle, wrong=()):
    made = [CheckRun(NOP, i, None, code, f"nop {i}", 0.5) for i, code in enumerate(nop)]
    made += [CheckRun(ORACLE, i, 0, code, f"oracle {i}", 0.5) for i, code in enumerate(oracle)]
    return made + [CheckRun(WRONG, i, 0, code, f"wrong {i}", 0.5) for i, code in enumerate(wrong)]


def test_a_right_verifier_is_certified():
    cert = certificate(runs([1, 1, 1], [0, 0, 0], [1, 2]), WRONGS, wanted_wrong=2)
    assert cert["certified"] and cert["findings"] == [] and (cert["wrong_total"], cert["wrong_caught"]) == (2, 2)


def test_each_failed_check_is_a_finding_in_words_the_agent_can_act_on():
    cert = certificate(runs([1, 1], [1, 1], [0, 1]), WRONGS, wanted_wrong=2)
    assert not cert["certified"] and cert["nop"] and not cert["oracle"] and cert["stable"]
    assert cert["findings"][0].startswith("oracle: after the reference solution (exit 0) the verifier exits 1: oracle 0")
    assert cert["findings"][1].startswith("wrong solution accepted: the verifier passes after a wrong solution (skips the commit)")
    assert "git add ." in cert["findings"][1] and cert["wrong_caught"] == 1
    assert rejection({**cert, "repairs": 2}).startswith("certification failed (after 2 repair rounds): oracle:")


def test_a_verifier_that_disagrees_with_itself_is_unstable_not_wrong():
    cert = certificate(runs([1, 0, 1], [0, 0, 0]), [], wanted_wrong=0)
    assert not cert["stable"] and not cert["nop"] and cert["oracle"]
    assert cert["findings"] == ["unstable: the verifier gave different answers on the untouched start state, "
                                "exit codes [1, 0, 1] over 3 runs"]


def test_a_passing_start_state_is_a_nop_finding():
    cert = certificate(runs([0, 0], [0, 0]), [], wanted_wrong=0)
    assert cert["findings"][0].startswith("nop: the verifier passes (exit 0) on the untouched start state")


def test_no_wrong_solutions_cannot_be_repaired():
    cert = certificate(runs([1], [0]), [], wanted_wrong=2, wrong_error="the reply was not usable: empty reply")
    assert not cert["certified"] and cert["findings"] == ["no wrong solutions to try: the reply was not usable: empty reply"]
    assert not repairable(cert)


def test_a_repairs_changes_add_to_the_first_episodes():
    first = merge_changes(None, [Change("/srv/repo", "added"), Change("/srv/repo/a", "added"),
                                 Change("/etc/motd", "deleted"), Change("/etc", "modified")])
    assert first == {"changed_paths": ["/etc", "/etc/motd", "/srv/repo", "/srv/repo/a"],
                     "added_paths": ["/srv/repo", "/srv/repo/a"], "deleted_paths": ["/etc/motd"]}
    # The repair removes a file the first episode made, brings back one it deleted, adds one.
    second = merge_changes(first, [Change("/srv/repo/a", "deleted"), Change("/etc/motd", "added"),
                                   Change("/srv/repo/b", "added"), Change("/srv/repo", "modified")])
    assert second == {"changed_paths": ["/etc", "/etc/motd", "/srv/repo", "/srv/repo/b"],
                      "added_paths": ["/srv/repo", "/srv/repo/b"], "deleted_paths": []}
