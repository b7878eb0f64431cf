// One-shot replica set initiation for the compose setup (run by the
// `mongo-init` service with mongosh against mongo1). Idempotent: if the set is
// already initiated it only waits for a primary. Exits non-zero on timeout so
// that services depending on it (service_completed_successfully) do not start.

const config = {
  _id: "rs0",
  members: [
    { _id: 0, host: "mongo1:27017", priority: 2 },
    { _id: 1, host: "mongo2:27017", priority: 1 },
    { _id: 2, host: "mongo3:27017", priority: 1 },
  ],
};

let initiated = false;
try {
  rs.status();
  initiated = true;
  print("replica set rs0 already initiated");
} catch (e) {
  if (e.codeName !== "NotYetInitialized") {
    throw e;
  }
}
if (!initiated) {
  const res = rs.initiate(config);
  print("rs.initiate: " + JSON.stringify(res));
}

const deadline = Date.now() + 120 * 1000;
while (Date.now() < deadline) {
  try {
    const status = rs.status();
    const primary = status.members.find((m) => m.stateStr === "PRIMARY");
    const healthy = status.members.filter((m) => m.health === 1).length;
    if (primary && healthy === config.members.length) {
      print("primary is " + primary.name + "; " + healthy + " members healthy");
      quit(0);
    }
  } catch (e) {
    print("waiting for replica set: " + e.message);
  }
  sleep(1000);
}
print("timed out waiting for a primary");
quit(1);
