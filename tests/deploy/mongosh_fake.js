// Runs deploy/kubernetes/base/mongodb/init-replicaset.js under node against a simulated
// replica set, since no mongod runs here. It stands in for the few mongosh globals the script
// uses (Mongo, print, quit, sleep, process.env) and answers the admin commands the way mongod
// does for the cases the script handles; test_deploy_mongodb_init.py writes the scenarios.
//
//   node mongosh_fake.js SCRIPT SCENARIO_JSON  ->  prints {exitCode, log, output, state}
'use strict';
const fs = require('fs');
const vm = require('vm');

const [scriptPath, scenarioJson] = process.argv.slice(2);
const scenario = JSON.parse(scenarioJson);
const state = scenario.state;
// state: {root: {user, pwd}, members: {host: {up, downFor, setName}}, config, users, busyOnce}
const log = [];
const output = [];

class Quit extends Error {
  constructor(code) { super(`quit(${code})`); this.exitCode = code; }
}

function serverError(code, codeName, message) {
  const error = new Error(message);
  error.name = 'MongoServerError';
  error.code = code;
  error.codeName = codeName;
  return error;
}

function parseUri(uri) {
  const match = /^mongodb:\/\/(?:([^:@/]+):([^@/]+)@)?([^/]+)\/\?(.*)$/.exec(uri);
  if (!match) throw new Error(`fake: cannot parse ${uri}`);
  const options = Object.fromEntries(match[4].split('&').map((kv) => kv.split('=')));
  return {
    user: match[1] && decodeURIComponent(match[1]),
    pwd: match[2] && decodeURIComponent(match[2]),
    hosts: match[3].split(','),
    options,
  };
}

function reachable(host) {
  const member = state.members[host];
  if (!member) throw new Error(`getaddrinfo ENOTFOUND ${host}`);
  if (member.downFor > 0) {
    member.downFor -= 1;
    throw new Error(`connect ECONNREFUSED ${host}`);
  }
  if (!member.up) throw new Error(`connect ECONNREFUSED ${host}`);
  return member;
}

function primaryHost() {
  if (!state.config) return undefined;
  return state.config.members.map((m) => m.host).find((h) => state.members[h] && state.members[h].up && state.members[h].setName);
}

function Mongo(uri) {
  const parsed = parseUri(uri);
  const authenticated = parsed.user !== undefined;
  if (authenticated && (parsed.user !== state.root.user || parsed.pwd !== state.root.pwd)) {
    throw serverError(18, 'AuthenticationFailed', 'Authentication failed.');
  }
  let target;
  if (parsed.options.directConnection === 'true') {
    target = parsed.hosts[0];
    reachable(target);
  } else if (parsed.options.replicaSet) {
    parsed.hosts.forEach((h) => { try { reachable(h); } catch (e) { /* seed list may be partial */ } });
    target = primaryHost();
    if (!target) throw new Error('Server selection timed out after 30000 ms');
  } else {
    throw new Error('fake: expected directConnection or replicaSet');
  }
  const needAuth = () => {
    if (!authenticated) throw serverError(13, 'Unauthorized', 'command requires authentication');
  };
  const admin = {
    runCommand(command) {
      const name = Object.keys(command)[0];
      const member = reachable(target);
      switch (name) {
        case 'ping':
          return { ok: 1 };
        case 'hello': {
          const reply = { ok: 1, isWritablePrimary: target === primaryHost() };
          if (member.setName) reply.setName = member.setName;
          return reply;
        }
        case 'replSetGetStatus':
          needAuth();
          if (!member.setName) throw serverError(94, 'NotYetInitialized', 'no replset config has been received');
          return { ok: 1, set: member.setName };
        case 'replSetInitiate': {
          needAuth();
          if (member.setName) throw serverError(23, 'AlreadyInitialized', 'already initialized');
          const config = command.replSetInitiate;
          if (config.members.length !== 1 || config.members[0].host !== target) {
            throw new Error('fake: the script must initiate with the member it is connected to');
          }
          state.config = { _id: config._id, version: 1, members: config.members };
          member.setName = config._id;
          log.push(`initiate ${target}`);
          return { ok: 1 };
        }
        case 'replSetGetConfig':
          needAuth();
          return { ok: 1, config: JSON.parse(JSON.stringify(state.config)) };
        case 'replSetReconfig': {
          needAuth();
          if (target !== primaryHost()) throw serverError(10107, 'NotWritablePrimary', 'not primary');
          if (state.busyOnce) {
            state.busyOnce = false;
            throw serverError(109, 'ConfigurationInProgress', 'a reconfig is in progress');
          }
          const config = command.replSetReconfig;
          if (config.version !== state.config.version + 1) throw serverError(103, 'NewReplicaSetConfigurationIncompatible', 'version');
          if (config.members.length !== state.config.members.length + 1) {
            throw serverError(103, 'NewReplicaSetConfigurationIncompatible', 'add one voting member at a time');
          }
          const ids = new Set(config.members.map((m) => m._id));
          if (ids.size !== config.members.length) throw serverError(103, 'NewReplicaSetConfigurationIncompatible', 'duplicate _id');
          const added = config.members[config.members.length - 1];
          reachable(added.host).setName = config._id;
          state.config = config;
          log.push(`add ${added.host}`);
          return { ok: 1 };
        }
        case 'usersInfo': {
          needAuth();
          const user = state.users[command.usersInfo.user];
          return { ok: 1, users: user ? [{ user: command.usersInfo.user }] : [] };
        }
        case 'createUser':
          needAuth();
          if (target !== primaryHost()) throw serverError(10107, 'NotWritablePrimary', 'not primary');
          if (state.users[command.createUser]) throw serverError(51003, 'Location51003', 'User already exists');
          state.users[command.createUser] = { pwd: command.pwd, roles: command.roles };
          log.push(`createUser ${command.createUser}`);
          return { ok: 1 };
        case 'updateUser':
          needAuth();
          if (!state.users[command.updateUser]) throw serverError(11, 'UserNotFound', 'no such user');
          state.users[command.updateUser] = { pwd: command.pwd, roles: command.roles };
          log.push(`updateUser ${command.updateUser}`);
          return { ok: 1 };
        default:
          throw new Error(`fake: unexpected command ${name}`);
      }
    },
  };
  return { getDB(name) { if (name !== 'admin') throw new Error('fake: admin only'); return admin; } };
}

const sandbox = {
  Mongo,
  print: (...args) => output.push(args.join(' ')),
  quit: (code) => { throw new Quit(code === undefined ? 0 : code); },
  sleep: () => {},
  process: { env: scenario.env },
};
let exitCode = 0;
try {
  vm.runInNewContext(fs.readFileSync(scriptPath, 'utf8'), sandbox, { filename: scriptPath });
} catch (error) {
  if (error instanceof Quit) {
    exitCode = error.exitCode;
  } else {
    exitCode = 1;
    output.push(`uncaught: ${error.message}`);
  }
}
process.stdout.write(JSON.stringify({ exitCode, log, output, state }));
