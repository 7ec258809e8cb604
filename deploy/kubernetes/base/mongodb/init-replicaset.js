// Run by the mongodb-init Job as `mongosh --nodb init-replicaset.js`.
//
// Brings the replica set to what the StatefulSet declares, in idempotent steps, so the Job can
// run again at any time (after a scale-up, after a restore) without harm:
//   1. wait until every member answers a ping;
//   2. if member 0 has no replica set configuration, initiate the set with member 0 alone
//      (the other members may hold the root user their first start created, and a member
//      with data cannot be part of an initial configuration, but can be added);
//   3. add each declared member missing from the configuration, one reconfig at a time;
//   4. create the server's database user, or reset its password and roles to the Secret's.
// Loops use plain `for`: mongosh does not await shell calls inside Array callbacks.

function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback !== undefined) return fallback;
    print(`mongodb-init: environment variable ${name} is not set`);
    quit(2);
  }
  return value;
}

const replicaSet = env('MONGODB_REPLICA_SET', 'rs0');
const service = env('MONGODB_SERVICE', 'mongodb');
const namespace = env('POD_NAMESPACE');
const memberCount = parseInt(env('MONGODB_MEMBERS'), 10);
if (!(memberCount >= 1)) {
  print(`mongodb-init: MONGODB_MEMBERS must be a positive number, got ${env('MONGODB_MEMBERS')}`);
  quit(2);
}
const credentials = encodeURIComponent(env('MONGO_INITDB_ROOT_USERNAME')) + ':' +
  encodeURIComponent(env('MONGO_INITDB_ROOT_PASSWORD')) + '@';
const appDatabase = env('KUBEKVM_DATABASE', 'kubekvm');
const appUser = env('KUBEKVM_DB_USERNAME');
const appPassword = env('KUBEKVM_DB_PASSWORD');

const hosts = [];
for (let i = 0; i < memberCount; i++) {
  hosts.push(`${service}-${i}.${service}.${namespace}.svc:27017`);
}

// Runs an admin command; a failure comes back as {ok: 0, code, codeName, errmsg}, whether the
// shell threw it or returned it.
function adminCommand(connection, command) {
  try {
    return connection.getDB('admin').runCommand(command);
  } catch (error) {
    return { ok: 0, code: error.code, codeName: error.codeName, errmsg: String(error.message) };
  }
}

// Calls attempt() until it returns something other than undefined; prints why it waits.
function retry(what, attempt, tries) {
  let lastError = '';
  for (let i = 0; i < tries; i++) {
    try {
      const result = attempt();
      if (result !== undefined) return result;
    } catch (error) {
      lastError = String(error.message);
    }
    if (i % 10 === 0) print(`mongodb-init: waiting for ${what}${lastError ? ': ' + lastError : ''}`);
    sleep(3000);
  }
  throw new Error(`mongodb-init: gave up waiting for ${what}${lastError ? ': ' + lastError : ''}`);
}

const connections = {};
function connectTo(uri) {
  if (!(uri in connections)) connections[uri] = new Mongo(uri);
  return connections[uri];
}

// 1. Every member is up (a ping needs no authentication).
for (let i = 0; i < hosts.length; i++) {
  retry(`${hosts[i]} to answer`, () => {
    const reply = adminCommand(connectTo(`mongodb://${hosts[i]}/?directConnection=true`), { ping: 1 });
    return reply.ok === 1 ? true : undefined;
  }, 200);
}

// 2. Initiate with member 0, unless a configuration exists. Another member that already
// belongs to a set means member 0 lost its volume: the primary will resync it; initiating
// here would create a second set of the same name.
const first = connectTo(`mongodb://${credentials}${hosts[0]}/?authSource=admin&directConnection=true`);
const status = adminCommand(first, { replSetGetStatus: 1 });
let configuredElsewhere = '';
for (let i = 1; i < hosts.length; i++) {
  const hello = adminCommand(connectTo(`mongodb://${hosts[i]}/?directConnection=true`), { hello: 1 });
  if (hello.ok === 1 && hello.setName) configuredElsewhere = hosts[i];
}
if (status.ok === 1) {
  print(`mongodb-init: replica set ${status.set} already initiated`);
} else if (configuredElsewhere) {
  print(`mongodb-init: ${hosts[0]} has no configuration but ${configuredElsewhere} has: not initiating`);
} else if (status.codeName === 'NotYetInitialized' || status.code === 94) {
  const reply = adminCommand(first, {
    replSetInitiate: { _id: replicaSet, members: [{ _id: 0, host: hosts[0] }] },
  });
  if (reply.ok !== 1 && reply.codeName !== 'AlreadyInitialized') {
    throw new Error(`mongodb-init: replSetInitiate failed: ${reply.errmsg}`);
  }
  print(`mongodb-init: initiated replica set ${replicaSet} with ${hosts[0]}`);
} else {
  throw new Error(`mongodb-init: replSetGetStatus on ${hosts[0]} failed: ${status.errmsg}`);
}

// 3. Through the primary: add the missing members.
const primaryUri = `mongodb://${credentials}${hosts.join(',')}/?authSource=admin` +
  `&replicaSet=${replicaSet}&w=majority`;
const primary = retry('a primary', () => {
  const connection = connectTo(primaryUri);
  const hello = adminCommand(connection, { hello: 1 });
  return hello.ok === 1 && hello.isWritablePrimary ? connection : undefined;
}, 200);

for (let i = 0; i < hosts.length; i++) {
  retry(`${hosts[i]} to be in the configuration`, () => {
    const current = adminCommand(primary, { replSetGetConfig: 1 });
    if (current.ok !== 1) throw new Error(current.errmsg);
    const config = current.config;
    let nextId = 0;
    for (let m = 0; m < config.members.length; m++) {
      if (config.members[m].host === hosts[i]) return true;
      nextId = Math.max(nextId, config.members[m]._id + 1);
    }
    config.version += 1;
    config.members.push({ _id: nextId, host: hosts[i] });
    // The server marks the new member "newlyAdded" (non-voting) until its initial sync is
    // done; a second reconfig waits until this one is committed (retried here).
    const reply = adminCommand(primary, { replSetReconfig: config });
    if (reply.ok !== 1) throw new Error(reply.errmsg);
    print(`mongodb-init: added ${hosts[i]}`);
    return true;
  }, 100);
}

// 4. The server's user: readWrite on its database, authenticated against admin.
const existing = adminCommand(primary, { usersInfo: { user: appUser, db: 'admin' } });
if (existing.ok !== 1) throw new Error(`mongodb-init: usersInfo failed: ${existing.errmsg}`);
const roles = [{ role: 'readWrite', db: appDatabase }];
const userCommand = existing.users.length === 0
  ? { createUser: appUser, pwd: appPassword, roles: roles, writeConcern: { w: 'majority' } }
  : { updateUser: appUser, pwd: appPassword, roles: roles, writeConcern: { w: 'majority' } };
const userReply = adminCommand(primary, userCommand);
if (userReply.ok !== 1) throw new Error(`mongodb-init: ${Object.keys(userCommand)[0]} failed: ${userReply.errmsg}`);
print(`mongodb-init: user ${appUser} has readWrite on ${appDatabase}`);
print(`mongodb-init: done, members: ${hosts.join(', ')}`);
