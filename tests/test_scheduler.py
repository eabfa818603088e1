"""
The master's task scheduling, over the wire, with a Clock and real SQLite.
"""

from __future__ import annotations

import struct

import msgspec
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from picluster.master.connection import MasterFactory
from picluster.master.registry import SlaveRegistry
from picluster.master.scheduler import Scheduler
from picluster.master.store import StoreError, TaskStore
from picluster.wire.errors import ServiceError
from tests.helpers import MASTER_FACTS, frame, sent
from tests.taskhelpers import FakeClient, FakeSlave, Peer, SynchronousPool, task_master

PRIMES = {"name": "primes", "args": {"start": 0, "stop": 100}}


class Cluster(unittest.TestCase):
    """A master with a client; tests add slaves."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = SynchronousPool()
        self.master = task_master(self.clock, self.pool, overdue_grace=15.0)
        self.scheduler = self.master.scheduler
        self.client = FakeClient(self.master, self.clock)

    def submit(self, *specs: dict, count: int = 1) -> list[int]:
        reply = self.client.submit(*(specs or [PRIMES] * count))
        self.assertEqual(reply["type"], "submitted", reply)
        return [task["id"] for task in reply["payload"]["tasks"]]


class SubmitTests(Cluster):
    def test_submitStoresAndAnswersIds(self) -> None:
        """A submission is stored and answered with one queued id per spec, in order."""
        ids = self.submit(PRIMES, {"name": "sleep", "args": {"seconds": 1}})
        self.assertEqual(ids, [1, 2])
        records = self.client.records(1, 2)
        self.assertEqual([records[1]["name"], records[2]["name"]], ["primes", "sleep"])
        self.assertEqual({r["state"] for r in records.values()}, {"queued"})
        # Who submitted them: this plain master's client, at its address.
        self.assertEqual({r["submitted_by"] for r in records.values()}, {"plain client at 10.0.0.50:4321"})

    def test_warnsOfNamesNoSlaveOffers(self) -> None:
        """A name that no connected slave offers is named in a warning."""
        FakeSlave(self.master, self.clock, tasks=("sleep",))
        reply = self.client.submit(PRIMES, {"name": "sleep"})
        self.assertEqual(len(reply["payload"]["warnings"]), 1)
        self.assertIn("'primes'", reply["payload"]["warnings"][0])

    def test_badSpecStoresNothing(self) -> None:
        """One bad spec refuses the whole submission, naming its index."""
        reply = self.client.submit(PRIMES, {"name": "primes", "args": [1, 2]})
        self.assertEqual(reply["type"], "bad_message")
        self.assertEqual(reply["payload"]["index"], 1)
        self.assertEqual(reply["payload"]["field"], "tasks[1].args")
        self.assertIn("Expected `object | null`, got `array`", reply["payload"]["error"])
        self.assertEqual(self.client.request("tasks", {})["payload"]["tasks"], [])

    def test_unknownRequirementRefused(self) -> None:
        """An unknown requirement is refused with the known ones listed."""
        reply = self.client.submit({"name": "primes", "requirements": {"gpu": True}})
        self.assertEqual(reply["type"], "bad_message")
        self.assertIn("unknown field `gpu`", reply["payload"]["error"])
        self.assertEqual(reply["payload"]["field"], "tasks[0].requirements")
        self.assertEqual(reply["payload"]["known"], ["min_ram", "min_cores", "tags", "hostname"])

    def test_oversizedArgumentsRefused(self) -> None:
        """Arguments past --max-args are refused and nothing is stored."""
        master = task_master(self.clock, max_args=100)
        client = FakeClient(master, self.clock)
        reply = client.submit({"name": "primes", "args": {"text": "x" * 200}})
        self.assertEqual(reply["type"], "bad_message")
        self.assertIn("exceed the 100 byte limit", reply["payload"]["error"])
        self.assertEqual(client.request("tasks", {})["payload"]["tasks"], [])

    def test_sameKeyIsStoredOnce(self) -> None:
        """A resubmitted key answers the stored task instead of storing it twice."""
        first = self.client.submit(dict(PRIMES, key="k1"))["payload"]["tasks"][0]
        again = self.client.submit(dict(PRIMES, key="k1"), dict(PRIMES, key="k2"))["payload"]["tasks"]
        self.assertEqual(again[0]["id"], first["id"])
        self.assertTrue(again[0]["duplicate"])
        self.assertFalse(again[1]["duplicate"])
        self.assertEqual(len(self.client.request("tasks", {})["payload"]["tasks"]), 2)

    def test_keyReusedForOtherArgumentsRefused(self) -> None:
        """A key that names a task with other arguments is refused, storing nothing."""
        self.client.submit(dict(PRIMES, key="k1"))
        reply = self.client.submit({"name": "primes", "args": {"start": 5, "stop": 6}, "key": "k1"})
        self.assertEqual(reply["type"], "bad_message")
        self.assertIn("already names task 1", reply["payload"]["error"])

    def test_taskMessagesNeedHello(self) -> None:
        """A connection that has not said hello cannot submit."""
        from tests.taskhelpers import Peer

        peer = Peer(self.master, self.clock, "10.0.0.77")
        reply = peer.request("submit", {"tasks": [PRIMES]})
        self.assertEqual(reply["type"], "bad_message")
        self.assertIn("say hello first", reply["payload"]["error"])

    def test_clientIsNotASlave(self) -> None:
        """A client is not listed among the slaves."""
        FakeSlave(self.master, self.clock)
        details = self.client.request("info", "slave_details")["payload"]
        self.assertEqual([s["hostname"] for s in details], ["pi-one"])

    def test_clientCannotReportResults(self) -> None:
        """Only a slave may send task results."""
        reply = self.client.request("task_result", {"id": 1, "attempt": 1, "outcome": "done"})
        self.assertEqual(reply["type"], "bad_message")

    def test_queueFullRefused(self) -> None:
        """Past the open-task limit a submission is refused with a clear error."""
        master = task_master(self.clock, max_open_tasks=2)
        client = FakeClient(master, self.clock)
        client.submit(PRIMES, PRIMES)
        reply = client.submit(PRIMES)
        self.assertEqual(reply["type"], "error")
        self.assertIn("the queue is full", reply["payload"]["error"])


class RefusedTaskTests(Cluster):
    def test_refusedNameRefusesTheSubmission(self) -> None:
        """A task the master refuses to queue makes the whole submit a bad_message naming it."""
        self.master.scheduler.refused_tasks = {"sleep": "sleep is refused here"}
        reply = self.client.submit(PRIMES, {"name": "sleep", "args": {"seconds": 1}})
        self.assertEqual(reply["type"], "bad_message")
        self.assertEqual(reply["payload"]["error"], "task 1: sleep is refused here")
        self.assertEqual(reply["payload"]["index"], 1)
        self.assertEqual(self.client.request("tasks", {})["payload"]["tasks"], [])


class DispatchTests(Cluster):
    def test_slotsBoundRunningTasks(self) -> None:
        """A slave is given at most as many tasks as it has slots."""
        slave = FakeSlave(self.master, self.clock, slots=2)
        self.submit(count=5)
        self.assertEqual([run["id"] for run in slave.runs()], [1, 2])
        slave.finish({"id": 1, "attempt": 1}, 25)
        self.assertEqual([run["id"] for run in slave.runs()], [3])

    def test_workSpreadsAcrossSlaves(self) -> None:
        """Equal slaves share the work evenly, oldest tasks first."""
        one = FakeSlave(self.master, self.clock, slots=4)
        two = FakeSlave(self.master, self.clock, "10.0.0.3", hostname="pi-two", slots=4)
        self.submit(count=6)
        first, second = one.runs(), two.runs()
        self.assertEqual((len(first), len(second)), (3, 3))
        self.assertEqual(sorted(r["id"] for r in first + second), [1, 2, 3, 4, 5, 6])

    def test_onlySlavesOfferingTheName(self) -> None:
        """A task goes only to a slave that offers its name."""
        sleeper = FakeSlave(self.master, self.clock, tasks=("sleep",))
        self.submit(PRIMES)
        self.assertEqual(sleeper.runs(), [])
        self.assertIn("no connected slave offers 'primes'", self.client.record(1)["waiting"])
        counter = FakeSlave(self.master, self.clock, "10.0.0.3", tasks=("primes",))
        self.assertEqual([r["id"] for r in counter.runs()], [1])

    def test_requirementsChooseTheSlave(self) -> None:
        """min_ram, min_cores, tags and hostname each pick the slave that meets them."""
        small = FakeSlave(self.master, self.clock, hostname="small", ram=1000, cores=1, slots=8)
        big = FakeSlave(self.master, self.clock, "10.0.0.3", hostname="big", ram=8000, cores=4,
                        tags=("ssd",), slots=8)
        for requirements in ({"min_ram": 4000}, {"min_cores": 2}, {"tags": ["ssd"]},
                             {"hostname": "big"}):
            self.submit(dict(PRIMES, requirements=requirements))
        self.assertEqual(small.runs(), [])
        self.assertEqual(len(big.runs()), 4)

    def test_unmetRequirementsExplainWaiting(self) -> None:
        """A task no slave can take says which requirement is unmet."""
        FakeSlave(self.master, self.clock, ram=1000)
        self.submit(dict(PRIMES, requirements={"min_ram": 4000}))
        self.assertIn("min_ram=4000", self.client.record(1)["waiting"])

    def test_busySlotsExplainWaiting(self) -> None:
        """A task behind busy slots says so."""
        FakeSlave(self.master, self.clock, slots=1)
        self.submit(count=2)
        self.assertIn("all 1 slots", self.client.record(2)["waiting"])
        self.assertIsNone(self.client.record(1)["waiting"])

    def test_refusedEverywhereFails(self) -> None:
        """A task every able slave refuses outright fails at once with the reason."""
        FakeSlave(self.master, self.clock, tasks=("reboot",),
                  refused={"reboot": "not started with --allow-admin"})
        self.submit({"name": "reboot"})
        record = self.client.record(1)
        self.assertEqual(record["state"], "failed")
        self.assertEqual(record["error"]["kind"], "not_permitted")
        self.assertIn("--allow-admin", record["error"]["message"])

    def test_refusedRunIsRetried(self) -> None:
        """A run the slave will not take goes back to the queue, counting the attempt."""
        slave = FakeSlave(self.master, self.clock, slots=1)
        self.submit(PRIMES)
        (envelope,) = slave.take("run_task")
        slave.send("bad_message", {"error": "unknown task", "name": "primes"}, reply_to=envelope["id"])
        self.assertEqual([r["attempt"] for r in slave.runs()], [2])
        self.assertEqual(self.client.record(1)["attempts"], 2)

    def test_noFreeSlotWaitsForAResult(self) -> None:
        """A slave short of slots is given nothing until it reports, and no run is spent."""
        slave = FakeSlave(self.master, self.clock, slots=2)
        self.submit(*[dict(PRIMES, retries=0)] * 3)
        first, second = slave.take("run_task")
        slave.send("ack", None, reply_to=first["id"])
        slave.send("bad_message", {"error": "no free slot", "slots": 2}, reply_to=second["id"])
        self.assertEqual(slave.runs(), [])
        self.assertEqual(self.client.record(2)["state"], "queued")
        slave.finish(first["payload"], 25)
        # Its next handout has a number of its own, and it may still run
        # although it allows no retry.
        self.assertEqual([(r["id"], r["attempt"]) for r in slave.runs()], [(2, 2), (3, 1)])
        slave.finish({"id": 2, "attempt": 2}, 25)
        self.assertEqual(self.client.record(2)["state"], "done")


    def test_resultRefillsItsSlaveAtOnce(self) -> None:
        """A result's freed slot gets the next task in the write that answers it, not a turn later."""
        slave = FakeSlave(self.master, self.clock, slots=2)
        self.submit(count=3)
        first, _ = slave.runs()
        slave.protocol.dataReceived(frame({"type": "task_result", "id": 7, "payload": {
            "id": first["id"], "attempt": 1, "outcome": "done", "result": 25}}))
        answered = {m["type"]: m for m in sent(slave.transport)}
        self.assertEqual(sorted(answered), ["ack", "run_task"])
        self.assertEqual(answered["ack"]["reply_to"], 7)
        self.assertEqual(answered["run_task"]["payload"]["id"], 3)

    def test_resultKeptAsSent(self) -> None:
        """
        A result stays the JSON the slave sent until it is stored and shown
        (decoded, it could take a dozen times the room); a client reads it
        as it was, and a null result is stored as none.
        """
        slave = FakeSlave(self.master, self.clock, slots=2)
        self.submit(count=2)
        first, second = slave.runs()
        store = self.scheduler.store
        saved: list[dict] = []
        self.patch(store, "save", lambda record, save=store.save: saved.append(record) or save(record))
        slave.protocol.dataReceived(frame({"type": "task_result", "id": 7, "payload": {
            "id": first["id"], "attempt": 1, "outcome": "done",
            "result": {"words": ["ab", "\u00e9"], "n": 2**70}}}))
        [record] = saved
        self.assertIsInstance(record["result"], msgspec.Raw)
        self.assertEqual(msgspec.json.decode(record["result"]), {"words": ["ab", "\u00e9"], "n": 2**70})
        slave.finish(second, None)
        self.clock.advance(1)
        records = self.client.records(first["id"], second["id"])
        self.assertEqual(records[first["id"]]["result"], {"words": ["ab", "\u00e9"], "n": 2**70})
        self.assertIsNone(records[second["id"]]["result"])

    def test_resultNotUTF8Refused(self) -> None:
        """A result whose text is not UTF-8 (which JSON's grammar alone lets by) is refused, not stored."""
        slave = FakeSlave(self.master, self.clock, slots=2)
        self.submit(count=1)
        (run,) = slave.runs()
        body = (b'{"type":"task_result","id":7,"payload":{"id":' + str(run["id"]).encode()
                + b',"attempt":1,"outcome":"done","result":"a\xffb"}}')
        slave.protocol.dataReceived(struct.pack("!I", len(body)) + body)
        [refusal] = sent(slave.transport)
        self.assertEqual((refusal["type"], refusal["reply_to"]), ("bad_message", 7))
        self.assertIn("not UTF-8", refusal["payload"]["error"])
        self.assertEqual(self.client.record(run["id"])["state"], "running")

    def test_refillLeavesADueDispatchToChoose(self) -> None:
        """While a dispatch is due, a result's slot waits for it: the least loaded slave still goes first."""
        one = FakeSlave(self.master, self.clock, slots=2)
        self.submit(count=4)
        first, _ = one.runs()
        two = Peer(self.master, self.clock, "10.0.0.3")
        two.request("hello", {"version": 1, "uuid": None})
        two.request("computer_details", {"hostname": "pi-two", "ram": 1024, "cpu_cores": 4})
        # Its offer and the first slave's result, in one turn.
        two.protocol.dataReceived(frame({"type": "worker", "id": 8, "payload": {
            "tasks": ["primes"], "refused": {}, "slots": 2, "tags": [], "holding": []}}))
        one.protocol.dataReceived(frame({"type": "task_result", "id": 9, "payload": {
            "id": first["id"], "attempt": 1, "outcome": "done", "result": 25}}))
        self.assertEqual([m["type"] for m in sent(one.transport)], ["ack"])
        self.clock.advance(0)
        self.assertEqual([m["payload"]["id"] for m in sent(two.transport) if m["type"] == "run_task"],
                         [3])
        self.assertEqual([run["id"] for run in one.runs()], [4])


class PrefetchTests(Cluster):
    """Slaves that hold runs ready beyond their slots (a worker offer's C{prefetch})."""

    def tearDown(self) -> None:
        # The count that spares a freed slot its search when nothing is ready.
        workers = self.scheduler.workers.values()
        self.assertEqual(self.scheduler.dispatcher.ready_runs, sum(len(w.ready) for w in workers))

    def test_freeSlotsFirst(self) -> None:
        """Every free slot is filled before any slave is handed a run to hold ready."""
        one = FakeSlave(self.master, self.clock, slots=1, prefetch=1)
        two = FakeSlave(self.master, self.clock, "10.0.0.3", hostname="pi-two", slots=1, prefetch=1)
        self.submit(count=2)
        self.assertEqual((len(one.runs()), len(two.runs())), (1, 1))
        self.submit(count=3)
        self.assertEqual((len(one.runs()), len(two.runs())), (1, 1))
        self.assertEqual(self.client.record(5)["state"], "queued")
        self.assertIsNone(self.client.record(5)["slave"])

    def test_readyRunStartsWhenItsSlotFrees(self) -> None:
        """A ready run is queued until the result that frees its slot: then it runs, its deadline too."""
        slave = FakeSlave(self.master, self.clock, slots=1, prefetch=1)
        self.submit(*[dict(PRIMES, timeout=10)] * 2)
        first, second = slave.runs()
        record = self.client.record(2)
        self.assertEqual((record["state"], record["started_at"]), ("queued", None))
        self.assertIn("handed to slave pi-one ahead of a free slot", record["waiting"])
        self.clock.advance(20)
        slave.finish(first, 25)
        record = self.client.record(2)
        self.assertEqual((record["state"], record["slave_hostname"], record["started_at"],
                          record["waiting"]), ("running", "pi-one", 20, None))
        # Its deadline (timeout and grace: 25 s) runs from then, not from the handout.
        self.clock.advance(25 - 0.1)
        self.assertEqual(self.client.record(2)["state"], "running")
        self.clock.advance(0.2)
        self.assertEqual(self.client.record(2)["error"]["kind"], "timeout")

    def test_resultRefillsTheReadyPlace(self) -> None:
        """A result's slot goes to the ready run; the ready place, in the same write, to the next task."""
        slave = FakeSlave(self.master, self.clock, slots=1, prefetch=1)
        self.submit(count=3)
        first, second = slave.runs()
        self.assertEqual(slave.finish(first, 25)["type"], "ack")
        self.assertEqual([(r["id"], r["attempt"]) for r in slave.runs()], [(3, 1)])
        self.assertEqual(self.client.record(2)["state"], "running")
        self.assertEqual(self.client.record(3)["state"], "queued")

    def test_cancelReadyRun(self) -> None:
        """Cancelling a ready run tells its slave, and nothing takes a slot that did not free."""
        slave = FakeSlave(self.master, self.clock, slots=1, prefetch=1)
        self.submit(count=2)
        first, second = slave.runs()
        self.client.request("cancel", {"id": 2})
        self.assertEqual(slave.cancels(), [{"id": 2, "attempt": 1}])
        self.assertEqual(self.client.record(1)["state"], "running")
        self.submit()
        self.assertEqual([r["id"] for r in slave.runs()], [3])
        self.assertEqual(self.client.record(3)["state"], "queued")
        slave.finish(first, 25)
        self.assertEqual(self.client.record(3)["state"], "running")

    def test_lostReadyRunSpendsNoRetry(self) -> None:
        """A run held ready by a lost slave never ran: it is queued again, whatever its retries."""
        slave = FakeSlave(self.master, self.clock, slots=1, prefetch=1)
        self.submit(*[dict(PRIMES, retries=0)] * 2)
        self.assertEqual(len(slave.runs()), 2)
        slave.lose()
        first, second = self.client.records(1, 2).values()
        self.assertEqual((first["state"], first["error"]["kind"]), ("failed", "lost"))
        self.assertIn("gave up after 1 runs", first["error"]["message"])
        self.assertEqual(second["state"], "queued")
        other = FakeSlave(self.master, self.clock, "10.0.0.3", slots=1)
        (run,) = other.runs()
        self.assertEqual((run["id"], run["attempt"]), (2, 2))
        other.finish(run, 25)
        self.assertEqual(self.client.record(2)["state"], "done")

    def test_rejoiningSlaveKeepsItsReadyRuns(self) -> None:
        """A slave back with its running and ready runs keeps them all, in their places."""
        slave = FakeSlave(self.master, self.clock, slots=1, prefetch=1)
        self.submit(count=2)
        first, second = slave.runs()
        slave.lose()
        back = FakeSlave(self.master, self.clock, uuid=slave.uuid, slots=1, prefetch=1,
                         holding=[{"id": 1, "attempt": 1}, {"id": 2, "attempt": 1}])
        self.assertEqual(back.accepted["payload"]["drop"], [])
        self.assertEqual(back.runs(), [])
        states = [record["state"] for record in self.client.records(1, 2).values()]
        self.assertEqual(states, ["running", "queued"])
        back.finish(first, 25)
        self.assertEqual(self.client.record(2)["state"], "running")
        back.finish(second, 25)
        self.assertEqual(self.client.record(2)["attempts"], 1)

    def test_idleSlotTakesAReadyRun(self) -> None:
        """A slot nothing queued can fill takes the newest ready run of another slave."""
        busy = FakeSlave(self.master, self.clock, slots=1, prefetch=2)
        self.submit(count=3)
        self.assertEqual([r["id"] for r in busy.runs()], [1, 2, 3])
        idle = FakeSlave(self.master, self.clock, "10.0.0.3", hostname="pi-two", slots=1)
        self.clock.advance(0)
        self.assertEqual(busy.cancels(), [{"id": 3, "attempt": 1}])
        self.assertEqual([(r["id"], r["attempt"]) for r in idle.runs()], [(3, 2)])
        self.assertEqual(self.client.record(3)["slave_hostname"], "pi-two")
        # The busy slave's slot, once free, goes to the run it still holds.
        busy.finish({"id": 1, "attempt": 1}, 25)
        self.assertEqual(self.client.record(2)["state"], "running")
        self.assertEqual(busy.runs(), [])

    def test_idleSlotTakesOnlyWhatItMayRun(self) -> None:
        """An idle slave is not handed a ready run it does not offer; a task it offers, it runs."""
        busy = FakeSlave(self.master, self.clock, slots=1, prefetch=2)
        self.submit(count=3)
        self.assertEqual(len(busy.runs()), 3)
        sleeper = FakeSlave(self.master, self.clock, "10.0.0.3", hostname="pi-two", slots=1,
                            tasks=("sleep",))
        self.clock.advance(0)
        self.assertEqual((sleeper.runs(), busy.cancels()), ([], []))
        self.submit({"name": "sleep", "args": {"seconds": 1}})
        self.clock.advance(0)
        self.assertEqual([r["id"] for r in sleeper.runs()], [4])

    def test_slotFreedByAResultTakesAReadyRun(self) -> None:
        """A slave whose result leaves it idle, with nothing queued, takes a run held ready elsewhere."""
        busy = FakeSlave(self.master, self.clock, slots=1, prefetch=2)
        quick = FakeSlave(self.master, self.clock, "10.0.0.3", hostname="pi-two", slots=1)
        self.submit(count=4)
        self.assertEqual([r["id"] for r in busy.runs()], [1, 3, 4])
        (run,) = quick.runs()
        with capturedLogs() as events:
            quick.finish(run, 25)
        self.assertEqual([(r["id"], r["attempt"]) for r in quick.runs()], [(4, 2)])
        self.assertEqual(busy.cancels(), [{"id": 4, "attempt": 1}])
        # Why task 4 was handed out twice, in the log.
        self.assertIn("Task 4 (primes) held ready by pi-one moved to idle slave pi-two",
                      [formatEvent(event) for event in events])

    def test_movedRunFinishedFirstByItsSlave(self) -> None:
        """A ready run moved away that its slave ran meanwhile ends the task; the new run is called off."""
        busy = FakeSlave(self.master, self.clock, slots=1, prefetch=1)
        self.submit(count=2)
        busy.runs()
        idle = FakeSlave(self.master, self.clock, "10.0.0.3", hostname="pi-two", slots=1)
        self.clock.advance(0)
        (moved,) = idle.runs()
        busy.finish({"id": 1, "attempt": 1}, 25)
        busy.finish({"id": 2, "attempt": 1}, 25)
        self.assertEqual(idle.cancels(), [{"id": 2, "attempt": moved["attempt"]}])
        record = self.client.record(2)
        self.assertEqual((record["state"], record["slave_hostname"]), ("done", "pi-one"))


class ResultTests(Cluster):
    def test_resultRecorded(self) -> None:
        """A result is stored with the slave, attempts and times."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(PRIMES)
        (run,) = slave.runs()
        self.clock.advance(3)
        self.assertEqual(slave.finish(run, 25)["type"], "ack")
        record = self.client.record(1)
        self.assertEqual((record["state"], record["result"], record["attempts"]), ("done", 25, 1))
        self.assertEqual((record["slave"], record["slave_hostname"]), (slave.uuid, "pi-one"))
        self.assertEqual(record["finished_at"] - record["started_at"], 3)

    def test_errorRecorded(self) -> None:
        """A failed run is stored with the error's type, message and traceback, not retried."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(PRIMES)
        (run,) = slave.runs()
        slave.finish(run, error={"type": "ZeroDivisionError", "message": "division by zero",
                                 "traceback": "Traceback ...", "kind": "error"})
        record = self.client.record(1)
        self.assertEqual(record["state"], "failed")
        self.assertEqual(record["error"]["type"], "ZeroDivisionError")
        self.assertEqual(record["error"]["traceback"], "Traceback ...")
        self.assertEqual(slave.runs(), [])

    def test_crashedRunRetried(self) -> None:
        """A run the slave says crashed (retry) is queued again."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(PRIMES)
        (run,) = slave.runs()
        slave.finish(run, error={"type": "Crashed", "message": "killed by signal 9",
                                 "kind": "crashed"}, retry=True)
        self.assertEqual([r["attempt"] for r in slave.runs()], [2])

    def test_duplicateResultRecordedOnce(self) -> None:
        """The same result sent twice is acknowledged twice and recorded once."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(PRIMES)
        (run,) = slave.runs()
        slave.finish(run, 25)
        finished = self.client.record(1)["finished_at"]
        self.clock.advance(10)
        self.assertEqual(slave.finish(run, 99)["type"], "ack")
        record = self.client.record(1)
        self.assertEqual((record["result"], record["finished_at"]), (25, finished))

    def test_malformedResultRefused(self) -> None:
        """A result without an outcome is a bad message and changes nothing."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(PRIMES)
        slave.runs()
        reply = slave.request("task_result", {"id": 1, "attempt": 1})
        self.assertEqual(reply["type"], "bad_message")
        self.assertEqual(self.client.record(1)["state"], "running")

    def test_watchPushesTheEnd(self) -> None:
        """A watcher is told when a watched task ends."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(count=2)
        reply = self.client.request("watch", {"ids": [1, 2, 99]})
        self.assertEqual([t["state"] for t in reply["payload"]["tasks"]], ["running", "running"])
        runs = slave.runs()
        slave.finish(runs[1], 7)
        (update,) = self.client.take("task_update")
        self.assertEqual((update["payload"]["task"]["id"], update["payload"]["task"]["result"]), (2, 7))


    def test_watchPushesWhatHasEnded(self) -> None:
        """Watching a task that has ended pushes its record; the reply holds only open ones."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(count=2)
        runs = slave.runs()
        slave.finish(runs[0], 25)
        reply = self.client.request("watch", {"ids": [1, 2]})
        self.assertEqual(reply["payload"]["tasks"], [{"id": 2, "state": "running"}])
        (update,) = self.client.take("task_update")
        self.assertEqual((update["payload"]["task"]["id"], update["payload"]["task"]["result"]), (1, 25))

    def test_watchOpenTasksFromMemory(self) -> None:
        """Watching tasks still open reads nothing from disk, and still pushes their ends."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(count=3)
        runs = slave.runs()
        before = self.pool.interactions
        reply = self.client.request("watch", {"ids": [3, 1, 2]})
        self.assertEqual(self.pool.interactions, before)
        self.assertEqual(reply["payload"]["tasks"], [
            {"id": 1, "state": "running"}, {"id": 2, "state": "running"},
            {"id": 3, "state": "queued"},
        ])
        slave.finish(runs[0], 5)
        (update,) = self.client.take("task_update")
        self.assertEqual((update["payload"]["task"]["id"], update["payload"]["task"]["result"]),
                         (1, 5))

    def test_watchMixesMemoryAndDisk(self) -> None:
        """Ended tasks are read from disk and pushed; unknown ids are left out of the reply."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(count=3)
        runs = slave.runs()
        slave.finish(runs[0], 25)
        reply = self.client.request("watch", {"ids": [1, 2, 99]})
        self.assertEqual(reply["payload"]["tasks"], [{"id": 2, "state": "running"}])
        (update,) = self.client.take("task_update")
        self.assertEqual((update["payload"]["task"]["id"], update["payload"]["task"]["state"]),
                         (1, "done"))

    def test_bigListsAreCutShort(self) -> None:
        """A list that would not fit in a frame is cut short and says there is more."""
        master = task_master(self.clock, max_reply=20_000)
        client = FakeClient(master, self.clock)
        client.submit(*[dict(PRIMES, args={"pad": "x" * 5000})] * 10)
        listed = client.request("tasks", {})["payload"]
        self.assertTrue(listed["more"])
        self.assertLess(len(listed["tasks"]), 10)
        rest = client.request("tasks", {"after": listed["tasks"][-1]["id"], "limit": 1000})["payload"]
        self.assertEqual(listed["tasks"][-1]["id"] + 1, rest["tasks"][0]["id"])
        small = self.client.request("tasks", {})["payload"]
        self.assertFalse(small["more"])

    def test_newestFirst(self) -> None:
        """order newest lists the latest tasks first; after pages on to older ones."""
        self.submit(count=5)
        first = self.client.request("tasks", {"order": "newest", "limit": 2})["payload"]
        self.assertEqual([record["id"] for record in first["tasks"]], [5, 4])
        rest = self.client.request("tasks", {"order": "newest", "after": 4})["payload"]
        self.assertEqual([record["id"] for record in rest["tasks"]], [3, 2, 1])
        oldest = self.client.request("tasks", {"after": 4})["payload"]
        self.assertEqual([record["id"] for record in oldest["tasks"]], [5])


class TaskLogTests(Cluster):
    """
    Lines about single tasks are logged one by one only while they are few.
    """

    def test_busyMasterSumsUp(self) -> None:
        """Past the budget, task ends are counted and summed up once an interval."""
        budget = self.scheduler.task_log.lines
        slave = FakeSlave(self.master, self.clock, slots=budget + 20)
        with capturedLogs() as events:
            self.submit(count=budget + 20)
            for run in slave.runs():
                slave.finish(run, 1)
            self.clock.advance(self.scheduler.task_log.interval)
        lines = [formatEvent(event) for event in events]
        ends = [line for line in lines if line.startswith("Task ") and " done on " in line]
        self.assertEqual(len(ends), budget - 1)  # the submission took one line
        self.assertIn("Left out of the log in the last 10 s: 21 done"
                      " (the task database has every task)", lines)

    def test_busyRefusalsOnABudget(self) -> None:
        """
        Runs refused by busy slaves (flow, not failure) are logged on a
        budget; any other refusal is logged every time.
        """
        handouts = self.scheduler.dispatcher.handout_log
        handouts.lines = 2
        slave = FakeSlave(self.master, self.clock, slots=4)
        with capturedLogs() as events:
            self.submit(count=4)
            runs = slave.take("run_task")
            for envelope in runs[:3]:
                slave.send("bad_message", {"error": "no free slot", "slots": 4}, reply_to=envelope["id"])
            slave.send("bad_message", {"error": "unknown task", "name": "primes"}, reply_to=runs[3]["id"])
            self.clock.advance(handouts.interval)
        lines = [formatEvent(event) for event in events]
        refused = [line for line in lines if " did not take task " in line]
        self.assertEqual([line.rpartition(": ")[2] for line in refused],
                         ["no free slot", "no free slot", "unknown task"])
        self.assertIn("Left out of the log in the last 10 s: 1 refused by busy slaves", lines)

    def test_flushedOnStop(self) -> None:
        """What was left out is said when the scheduler stops."""
        self.scheduler.task_log.lines = 0
        self.submit()
        with capturedLogs() as events:
            self.successResultOf(self.scheduler.stop())
        self.assertIn("1 submissions", " ".join(formatEvent(event) for event in events))


class FaultTests(Cluster):
    def test_lostSlaveTasksRunElsewhere(self) -> None:
        """Tasks running on a lost slave are queued again and run on another."""
        one = FakeSlave(self.master, self.clock, slots=2)
        self.submit(count=2)
        self.assertEqual(len(one.runs()), 2)
        one.lose()
        self.assertEqual({r["state"] for r in self.client.records(1, 2).values()}, {"queued"})
        two = FakeSlave(self.master, self.clock, "10.0.0.3", hostname="pi-two", slots=2)
        runs = two.runs()
        self.assertEqual([(r["id"], r["attempt"]) for r in runs], [(1, 2), (2, 2)])
        two.finish(runs[0], 25)
        record = self.client.record(1)
        self.assertEqual((record["state"], record["attempts"], record["slave_hostname"]),
                         ("done", 2, "pi-two"))

    def test_retryLimitFailsTheTask(self) -> None:
        """Past its retry limit a task lost with its slave fails with the reason."""
        self.submit(dict(PRIMES, retries=1))
        for host in ("10.0.0.2", "10.0.0.3"):
            slave = FakeSlave(self.master, self.clock, host)
            self.assertEqual(len(slave.runs()), 1)
            slave.lose()
        record = self.client.record(1)
        self.assertEqual((record["state"], record["attempts"]), ("failed", 2))
        self.assertEqual(record["error"]["type"], "SlaveLost")
        self.assertIn("gave up after 2 runs", record["error"]["message"])
        self.assertIn("was lost", record["error"]["message"])

    def test_lateResultOfEarlierRunKeptOnce(self) -> None:
        """A late result of a re-run task is kept once, and the other run is called off."""
        one = FakeSlave(self.master, self.clock, slots=1)
        self.submit(PRIMES)
        (first,) = one.runs()
        one.lose()
        two = FakeSlave(self.master, self.clock, "10.0.0.3", hostname="pi-two", slots=1)
        (second,) = two.runs()
        # The first slave comes back under its uuid and still delivers.
        back = FakeSlave(self.master, self.clock, "10.0.0.2", uuid=one.uuid, slots=1,
                         holding=[{"id": 1, "attempt": 1}])
        self.assertEqual(back.accepted["payload"]["drop"], [{"id": 1, "attempt": 1}])
        back.finish(first, 25)
        self.assertEqual(two.cancels(), [{"id": 1, "attempt": 2}])
        self.assertEqual(two.finish(second, 25)["type"], "ack")
        record = self.client.record(1)
        self.assertEqual((record["state"], record["result"], record["slave"]), ("done", 25, one.uuid))

    def test_earlierRunResultStopsTheLaterRun(self) -> None:
        """A slave's result of an earlier run ends the task and stops its own later run."""
        one = FakeSlave(self.master, self.clock, slots=1)
        self.submit(PRIMES)
        (first,) = one.runs()
        one.lose()
        # It rejoins without the run (it ended while away) and is given the task again.
        back = FakeSlave(self.master, self.clock, uuid=one.uuid, slots=1)
        (second,) = back.runs()
        self.assertEqual(second["attempt"], 2)
        back.finish(first, 25)
        self.assertEqual(back.cancels(), [{"id": 1, "attempt": 2}])
        self.assertEqual(self.client.record(1)["result"], 25)

    def test_resultOfAnotherSlavesRunIgnored(self) -> None:
        """A slave cannot end a task with a result for a run another slave was handed."""
        one = FakeSlave(self.master, self.clock, slots=1)
        self.submit(PRIMES)
        (run,) = one.runs()
        other = FakeSlave(self.master, self.clock, "10.0.0.3", slots=1)
        for attempt in (run["attempt"], run["attempt"] + 1):
            forged = other.finish({"id": run["id"], "attempt": attempt}, "forged")
            self.assertEqual(forged["type"], "ack")
        record = self.client.record(1)
        self.assertEqual((record["state"], record["result"], record["slave"]), ("running", None, one.uuid))
        one.finish(run, 25)
        record = self.client.record(1)
        self.assertEqual((record["state"], record["result"], record["slave"]), ("done", 25, one.uuid))

    def test_rejoiningSlaveKeepsItsRun(self) -> None:
        """A slave that rejoins still holding a run not yet given out keeps it."""
        one = FakeSlave(self.master, self.clock, slots=1)
        self.submit(PRIMES)
        (run,) = one.runs()
        one.lose()
        back = FakeSlave(self.master, self.clock, uuid=one.uuid, slots=1,
                         holding=[{"id": 1, "attempt": 1}])
        self.assertEqual(back.accepted["payload"]["drop"], [])
        self.assertEqual(back.runs(), [])
        self.assertEqual(self.client.record(1)["state"], "running")
        back.finish(run, 25)
        self.assertEqual(self.client.record(1)["attempts"], 1)

    def test_overdueTaskFails(self) -> None:
        """A task with no result by its timeout (plus grace) fails, and its run is called off."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(dict(PRIMES, timeout=10))
        slave.runs()
        self.clock.advance(10 + 15 - 0.1)
        self.assertEqual(self.client.record(1)["state"], "running")
        self.clock.advance(0.2)
        record = self.client.record(1)
        self.assertEqual((record["state"], record["error"]["kind"]), ("failed", "timeout"))
        self.assertEqual(slave.cancels(), [{"id": 1, "attempt": 1}])

    def test_cancel(self) -> None:
        """Cancelling stops a running task on its slave; a finished one cannot be cancelled."""
        slave = FakeSlave(self.master, self.clock, slots=1)
        self.submit(count=2)
        self.assertEqual([r["id"] for r in slave.runs()], [1])
        reply = self.client.request("cancel", {"id": 1})
        self.assertEqual(reply["payload"]["tasks"][0]["state"], "cancelled")
        self.assertEqual(slave.cancels(), [{"id": 1, "attempt": 1}])
        self.assertEqual([r["id"] for r in slave.runs()], [2])
        again = self.client.request("cancel", {"id": 1})
        self.assertEqual(again["type"], "bad_message")
        self.assertIn("already cancelled", again["payload"]["error"])
        missing = self.client.request("cancel", {"id": 42})
        self.assertIn("no task 42", missing["payload"]["error"])


class RestartTests(unittest.TestCase):
    def test_runningTasksWaitForTheirSlave(self) -> None:
        """After a restart a slave that rejoins claims its runs; the rest run after the grace."""
        clock = Clock()
        pool = SynchronousPool()
        master = task_master(clock, pool)
        client = FakeClient(master, clock)
        client.submit(PRIMES, PRIMES, PRIMES)
        one = FakeSlave(master, clock, slots=2)
        two = FakeSlave(master, clock, "10.0.0.3", hostname="pi-two", slots=1)
        held_by_one = one.runs()
        two.runs()
        # The master dies; a new one opens the same database.
        restarted = task_master(clock, pool, rejoin_grace=30.0)
        client = FakeClient(restarted, clock)
        self.assertIn("rejoin", client.record(1)["waiting"])
        back = FakeSlave(restarted, clock, uuid=one.uuid, slots=2,
                         holding=[{"id": r["id"], "attempt": 1} for r in held_by_one])
        self.assertEqual(back.accepted["payload"]["drop"], [])
        stranger = FakeSlave(restarted, clock, "10.0.0.9", hostname="pi-nine", slots=4)
        self.assertEqual(stranger.runs(), [])
        clock.advance(30)
        self.assertEqual([(r["id"], r["attempt"]) for r in stranger.runs()], [(3, 2)])
        records = client.records(1, 2, 3)
        self.assertEqual([records[i]["state"] for i in (1, 2, 3)], ["running"] * 3)
        self.assertEqual(records[1]["slave"], one.uuid)

    def test_unstartedRunsSurviveARestart(self) -> None:
        """
        A handout taken back before it started still spends no retry after
        a restart: the row keeps the count, so the new master counts the
        task's runs as the old one did.
        """
        clock = Clock()
        pool = SynchronousPool()
        master = task_master(clock, pool)
        client = FakeClient(master, clock)
        client.submit(PRIMES, dict(PRIMES, retries=1))
        busy = FakeSlave(master, clock, slots=1, prefetch=1)
        self.assertEqual([r["id"] for r in busy.runs()], [1, 2])
        busy.lose()
        self.assertEqual(client.record(2)["unstarted"], 1)
        restarted = task_master(clock, pool)
        client = FakeClient(restarted, clock)
        self.assertEqual((client.record(2)["attempts"], client.record(2)["unstarted"]), (1, 1))
        other = FakeSlave(restarted, clock, "10.0.0.3", hostname="pi-two", slots=2)
        self.assertEqual(sorted((r["id"], r["attempt"]) for r in other.runs()), [(1, 2), (2, 2)])
        # Its first run that started is lost: one retry left, so it runs again.
        other.lose()
        record = client.record(2)
        self.assertEqual((record["state"], record["attempts"], record["unstarted"]), ("queued", 2, 1))

    def test_submittedTasksSurvive(self) -> None:
        """Every acknowledged submission is in the database a new master opens."""
        clock = Clock()
        pool = SynchronousPool()
        client = FakeClient(task_master(clock, pool), clock)
        client.submit(*[PRIMES] * 5)
        client = FakeClient(task_master(clock, pool), clock)
        self.assertEqual(len(client.request("tasks", {"state": "queued"})["payload"]["tasks"]), 5)


class StalledDisk:
    """
    A disk that takes writes and finishes none of them until L{catch_up}:
    the store's transaction waits, and what comes meanwhile waits behind it.
    """

    def __init__(self, test: unittest.TestCase, pool: SynchronousPool):
        self.pool = pool
        self.real = pool.runInteraction
        self.waiting: list[tuple[defer.Deferred, tuple]] = []
        test.patch(pool, "runInteraction", self._wait)

    def _wait(self, *call: object, **named: object) -> defer.Deferred:
        waiting: defer.Deferred = defer.Deferred()
        self.waiting.append((waiting, call))
        return waiting

    def write_one(self) -> None:
        """Finish the oldest waiting transaction; the next waits in turn."""
        result, call = self.waiting.pop(0)
        self.real(*call).chainDeferred(result)

    def catch_up(self) -> None:
        """Write what waited, and everything after it as it comes."""
        self.pool.runInteraction = self.real
        waiting, self.waiting = self.waiting, []
        for result, call in waiting:
            self.real(*call).chainDeferred(result)


class DiskBacklogTests(Cluster):
    """
    Results waiting for a stalled disk, from every slave together, have a
    bound (--max-results-waiting): past it, a slave that sends one more is
    not read until half of them are stored.
    """

    def setUp(self) -> None:
        super().setUp()
        self.scheduler.max_results_waiting = 1000
        self.one = FakeSlave(self.master, self.clock, "10.0.0.2", hostname="pi-one", slots=1)
        self.two = FakeSlave(self.master, self.clock, "10.0.0.3", hostname="pi-two", slots=1)
        self.ids = self.submit(count=2)
        (self.run_one,) = self.one.runs()
        (self.run_two,) = self.two.runs()
        self.disk = StalledDisk(self, self.pool)

    def report(self, slave: FakeSlave, run: dict, result: object, request_id: int) -> None:
        slave.protocol.dataReceived(frame({"type": "task_result", "id": request_id, "payload": {
            "id": run["id"], "attempt": run["attempt"], "outcome": "done", "result": result}}))

    def test_heldPastTheBound(self) -> None:
        """
        The slave whose result passes the bound is held, the other read on;
        once the disk catches up it is read again, and every result is
        stored and acknowledged; the log says when and for how long.
        """
        with capturedLogs() as events:
            self.report(self.one, self.run_one, "a" * 600, 7)
            self.assertEqual(self.one.transport.producerState, "producing")
            self.report(self.two, self.run_two, "b" * 600, 8)
            self.assertEqual(self.scheduler.results_waiting, 2 * 602)
            self.assertEqual((self.one.transport.producerState, self.two.transport.producerState),
                             ("producing", "paused"))
            self.clock.advance(2)
            self.disk.catch_up()
        self.assertEqual(self.scheduler.results_waiting, 0)
        self.assertEqual(self.two.transport.producerState, "producing")
        for slave, request_id in ((self.one, 7), (self.two, 8)):
            self.assertIn(("ack", request_id), [(m["type"], m.get("reply_to")) for m in sent(slave.transport)])
        records = self.client.records(*self.ids)
        self.assertEqual([records[i]["result"] for i in self.ids], ["a" * 600, "b" * 600])
        lines = [formatEvent(event) for event in events if "disk" in formatEvent(event)]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("passed 1000 bytes (--max-results-waiting)", lines[0])
        self.assertIn("caught up after 2.0 s: 1 slaves are read again", lines[1])

    def test_readAgainAtHalf(self) -> None:
        """Held slaves are read again once at most half the bound waits, not at the first row stored."""
        self.report(self.one, self.run_one, "a" * 600, 7)
        self.report(self.two, self.run_two, "b" * 600, 8)
        self.disk.write_one()
        self.assertEqual(self.scheduler.results_waiting, 602)
        self.assertEqual(self.two.transport.producerState, "paused")
        self.disk.write_one()
        self.assertEqual(self.scheduler.results_waiting, 0)
        self.assertEqual(self.two.transport.producerState, "producing")

    def test_notSilentWhileHeld(self) -> None:
        """
        A slave held for the disk is not dropped as silent, however long the
        disk takes (its pings wait unread); once read again, silence counts.
        """
        dead_after = self.master.dead_after
        self.report(self.one, self.run_one, "a" * 600, 7)
        self.report(self.two, self.run_two, "b" * 600, 8)
        self.clock.advance(dead_after * 4)
        self.assertFalse(self.two.transport.disconnecting)
        # The other was read all along, said nothing, and is gone.
        self.assertTrue(self.one.transport.disconnecting)
        self.disk.catch_up()
        self.assertEqual(self.two.transport.producerState, "producing")
        self.clock.advance(dead_after)
        self.assertTrue(self.two.transport.disconnecting)

    def test_lostWhileHeld(self) -> None:
        """A held slave that goes is forgotten: the disk catching up reads nobody."""
        self.report(self.one, self.run_one, "a" * 600, 7)
        self.report(self.two, self.run_two, "b" * 600, 8)
        self.two.lose()
        self.assertEqual(self.scheduler._held_for_disk, {})
        self.disk.catch_up()
        self.assertEqual(self.scheduler.results_waiting, 0)


class FullDiskTests(Cluster):
    def test_submitOnFullDiskStoresNothing(self) -> None:
        """A submission the disk cannot hold gets a clear error, and nothing is stored."""
        self.pool.fill_disk()
        reply = self.client.submit(*[dict(PRIMES, args={"pad": "x" * 5000})] * 20)
        self.assertEqual(reply["type"], "error")
        self.assertIn("cannot store the tasks", reply["payload"]["error"])
        self.assertIn("full", reply["payload"]["error"])
        self.pool.free_disk()
        self.assertEqual(self.client.request("tasks", {})["payload"]["tasks"], [])

    def test_resultKeptUntilWritten(self) -> None:
        """A result the disk cannot take yet is acknowledged only once written."""
        slave = FakeSlave(self.master, self.clock)
        self.submit(PRIMES)
        (run,) = slave.runs()
        self.pool.fill_disk()
        slave.send("task_result", {"id": 1, "attempt": 1, "outcome": "done",
                                   "result": "y" * 50_000}, id=77)
        self.assertEqual([m for m in slave.take("ack") if m.get("reply_to") == 77], [])
        self.assertEqual(self.client.record(1)["state"], "done")
        self.pool.free_disk()
        self.clock.advance(1)
        self.assertEqual(len([m for m in slave.take("ack") if m.get("reply_to") == 77]), 1)
        restarted = FakeClient(task_master(self.clock, self.pool), self.clock)
        self.assertEqual(restarted.record(1)["state"], "done")


class StoreOpenTests(unittest.TestCase):
    def test_newerSchemaRefused(self) -> None:
        """A database made by a newer picluster is refused, not altered."""
        pool = SynchronousPool()
        pool.connection.execute("PRAGMA user_version = 99")
        failure = self.failureResultOf(TaskStore.open(":memory:", Clock(), pool=pool))
        self.assertIn("schema version 99", failure.getErrorMessage())


class ReadyTests(unittest.TestCase):
    """
    when_ready waits for the queue to load, then answers every message at once.
    """

    def test_waitsThenAnswersAtOnce(self) -> None:
        """Before loading it waits; once loaded, each call has fired already."""
        clock = Clock()
        scheduler = Scheduler(clock)
        waiting = scheduler.when_ready()
        self.assertNoResult(waiting)
        store = self.successResultOf(TaskStore.open(":memory:", clock, pool=SynchronousPool()))
        self.successResultOf(scheduler.start(store))
        self.successResultOf(waiting)
        self.successResultOf(scheduler.when_ready())

    def _master_loading(self) -> tuple[Clock, Scheduler, Peer]:
        """A master whose queue has not loaded, and a client that said hello to it."""
        clock = Clock()
        scheduler = Scheduler(clock)
        master = MasterFactory(SlaveRegistry(), scheduler=scheduler,
                               computer_details=dict(MASTER_FACTS), clock=clock)
        client = Peer(master, clock, "10.0.0.50")
        client.request("hello", {"version": 1, "uuid": None, "role": "client"})
        return clock, scheduler, client

    def test_messageWaitsForTheQueue(self) -> None:
        """A submit that comes while the queue loads is answered once it has loaded."""
        clock, scheduler, client = self._master_loading()
        client.send("submit", {"tasks": [PRIMES]}, id=7)
        self.assertEqual(sent(client.transport), [])
        store = self.successResultOf(TaskStore.open(":memory:", clock, pool=SynchronousPool()))
        self.successResultOf(scheduler.start(store))
        clock.advance(0)
        (reply,) = sent(client.transport)
        self.assertEqual((reply["type"], reply["reply_to"]), ("submitted", 7))
        self.assertEqual([task["id"] for task in reply["payload"]["tasks"]], [1])

    def test_messageToAnUnavailableQueue(self) -> None:
        """A submit to a queue that could not load is answered with the reason."""
        clock, scheduler, client = self._master_loading()
        scheduler.failed_to_start(Failure(StoreError("disk on fire")))
        reply = client.request("submit", {"tasks": [PRIMES]})
        self.assertEqual(reply["type"], "error")
        self.assertEqual(reply["payload"]["error"], "the task queue is unavailable: disk on fire")

    def test_unavailable(self) -> None:
        """A queue that could not load fails every later wait with its reason."""
        scheduler = Scheduler(Clock())
        waiting = scheduler.when_ready()
        scheduler.failed_to_start(Failure(StoreError("disk on fire")))
        for ready in (waiting, scheduler.when_ready()):
            failure = self.failureResultOf(ready, ServiceError)
            self.assertEqual(failure.getErrorMessage(),
                             "the task queue is unavailable: disk on fire")
