"""The outbox: the latest report per machine, taken out in batches (oldest first) and put back
when a batch could not be sent, without ever overwriting newer news."""

from __future__ import annotations

from agent.outbox import Outbox, StateReport


def test_batches_take_the_oldest_news_first_one_report_per_machine() -> None:
    outbox = Outbox()
    for machine_id in ("m1", "m2", "m3"):
        outbox.put_state(machine_id, "pending", "creating")
    outbox.put_state("m1", "running", None)  # newer news of m1: it moves to the back
    assert len(outbox) == 3
    first = outbox.take_states(2)
    assert [(r.machine_id, r.state) for r in first] == [("m2", "pending"), ("m3", "pending")]
    assert [(r.machine_id, r.state) for r in outbox.take_states(100)] == [("m1", "running")]
    assert outbox.take_states(100) == [] and len(outbox) == 0


def test_a_batch_put_back_goes_first_unless_its_machine_has_newer_news() -> None:
    outbox = Outbox()
    for machine_id in ("m1", "m2"):
        outbox.put_state(machine_id, "pending", None)
    batch = outbox.take_states(100)
    # While the batch was on its way (and failed), m2 changed and m3 appeared.
    outbox.put(StateReport("m2", "running", None, power_generation=2))
    outbox.put_state("m3", "pending", None)
    outbox.return_states(batch)
    assert [(r.machine_id, r.state) for r in outbox.take_states(100)] == [
        ("m1", "pending"), ("m2", "running"), ("m3", "pending")]
