"""An outside client of clustersched.v1, written only from the proto files.

The Rust test tests/tests/outside_client.rs generates the modules with
Python's stock grpcio-tools (`python3 -m grpc_tools.protoc`) into a
temporary directory and runs this script against a real scheduler:

    python3 outside_client.py GENERATED_DIR HOST:PORT [JOBS]

It checks that the generated package imports beside Python's standard
`sched` module, submits jobs, gets ALREADY_EXISTS for a duplicate name,
resumes a Watch after disconnecting without losing or repeating an event,
reads event times (google.protobuf.Timestamp), and pages ListJobs (with
page_size/page_token when the API has them) through JOBS jobs (130 unless
given; the Rust test asks for 100,000).
Any failure raises; the last line printed on success is "outside client: ok".

With SCHEDCTL_TLS_CA, SCHEDCTL_TLS_CERT and SCHEDCTL_TLS_KEY set (the
test harness's mutual TLS mode) it connects with that certificate.
"""

import datetime
import os
import sys
import time

GENERATED, TARGET = sys.argv[1], sys.argv[2]
JOBS = int(sys.argv[3]) if len(sys.argv) > 3 else 130
sys.path.insert(0, GENERATED)

import sched  # noqa: E402  (the standard library's, which must still work)

import grpc  # noqa: E402

from clustersched.v1 import scheduler_pb2 as pb  # noqa: E402
from clustersched.v1 import scheduler_pb2_grpc as rpc  # noqa: E402

assert hasattr(sched, "scheduler"), "the stdlib sched module is shadowed"

# Pages of 50 for a small run (several pages); the API's largest page
# (1,000) for a large one.
PAGE = 50 if JOBS < 10000 else 1000
# Jobs per Submit: a few small calls first, then large ones.
BATCH = 40 if JOBS < 10000 else 2000
TIMEOUT = 30


def channel():
    ca = os.environ.get("SCHEDCTL_TLS_CA")
    if not ca:
        return grpc.insecure_channel(TARGET)

    def read(name):
        with open(os.environ[name], "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("SCHEDCTL_TLS_CA"),
        private_key=read("SCHEDCTL_TLS_KEY"),
        certificate_chain=read("SCHEDCTL_TLS_CERT"),
    )
    return grpc.secure_channel(TARGET, creds)


def spec(name):
    return pb.JobSpec(
        name=name,
        tasks=1,
        resources=pb.ResourceRequest(cpu="100m", memory="64Mi"),
        command=["true"],
    )


def has_field(message, name):
    return name in message.DESCRIPTOR.fields_by_name


def has_method(name):
    service = pb.DESCRIPTOR.services_by_name["SchedulerService"]
    return any(m.name == name for m in service.methods)


stub = rpc.SchedulerServiceStub(channel())

# Submit: several calls of several jobs.
started = time.monotonic()
names = ["py-%06d" % i for i in range(JOBS)]
for start in range(0, JOBS, BATCH):
    batch = names[start:start + BATCH]
    stub.Submit(
        pb.SubmitRequest(jobs=[spec(n) for n in batch], submission_id="py-%d" % start),
        timeout=TIMEOUT,
    )
print("submitted %d jobs in %.1f s" % (JOBS, time.monotonic() - started))

# A duplicate name, in a new submission: ALREADY_EXISTS. (Before the API v1
# error cleanup, which also brought ListTasks, it was INVALID_ARGUMENT.)
try:
    stub.Submit(pb.SubmitRequest(jobs=[spec(names[0])], submission_id="py-dup"), timeout=TIMEOUT)
    raise AssertionError("a duplicate name was accepted")
except grpc.RpcError as e:
    expected = grpc.StatusCode.ALREADY_EXISTS
    if not has_method("ListTasks") and e.code() == grpc.StatusCode.INVALID_ARGUMENT:
        expected = grpc.StatusCode.INVALID_ARGUMENT
    assert e.code() == expected, "duplicate name: %s %s" % (e.code(), e.details())
    print("duplicate name: %s" % e.code().name)

# Unknown job: NOT_FOUND at once.
try:
    next(iter(stub.Watch(pb.WatchRequest(job="py-nope"), timeout=TIMEOUT)))
    raise AssertionError("a watch of an unknown job gave an event")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, "unknown job: %s %s" % (e.code(), e.details())

# Watch, disconnect, let something happen, resume from the last cursor.
job = names[1]
call = stub.Watch(pb.WatchRequest(job=job, since=0), timeout=TIMEOUT)
first = [next(call)]
assert first[0].kind == pb.EVENT_KIND_SUBMITTED, first[0]
# Times are google.protobuf.Timestamp: the stock runtime reads them.
if has_field(first[0], "event_time"):
    at = first[0].event_time.ToDatetime()
    age = datetime.datetime.utcnow() - at
    assert datetime.timedelta(seconds=-5) < age < datetime.timedelta(minutes=5), at
    print("event time: %s" % first[0].event_time.ToJsonString())
call.cancel()
stub.CancelJob(pb.CancelJobRequest(name=job), timeout=TIMEOUT)


def until_cancelled(stream):
    got = []
    for e in stream:
        got.append(e)
        if e.kind == pb.EVENT_KIND_CANCELLED:
            return got
    raise AssertionError("the stream ended before the cancel: %s" % got)


resumed = until_cancelled(stub.Watch(pb.WatchRequest(job=job, since=first[-1].cursor), timeout=TIMEOUT))
everything = until_cancelled(stub.Watch(pb.WatchRequest(job=job, since=0), timeout=TIMEOUT))
seen = [(e.cursor, e.kind) for e in first + resumed]
kept = [(e.cursor, e.kind) for e in everything]
assert seen == kept, "lost or repeated: saw %s, kept %s" % (seen, kept)
print("watch resumed: %d event(s) before, %d after" % (len(first), len(resumed)))

# ListJobs, page by page when the API pages.
listed = []
request = pb.ListJobsRequest()
if has_field(request, "page_size"):
    token = ""
    pages = 0
    started = time.monotonic()
    while True:
        page = stub.ListJobs(pb.ListJobsRequest(page_size=PAGE, page_token=token), timeout=TIMEOUT)
        assert len(page.jobs) <= PAGE, "page of %d > %d" % (len(page.jobs), PAGE)
        listed += [j.name for j in page.jobs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages >= JOBS // PAGE, "only %d page(s)" % pages
    print("listed %d jobs in %d pages in %.1f s" % (len(listed), pages, time.monotonic() - started))
else:
    response = stub.ListJobs(request, timeout=TIMEOUT)
    listed = [j.name for j in response.jobs]
    print("listed %d jobs (no paging in this API)" % len(listed))
assert sorted(listed) == sorted(set(listed)), "a job listed twice"
missing = set(names) - set(listed)
assert not missing, "not listed: %s" % sorted(missing)

print("outside client: ok")
