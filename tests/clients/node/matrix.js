// The Node clients of the client matrix: basic-ftp (explicit and implicit FTPS) and
// ssh2-sftp-client (over ssh2), driven as a Node integration would drive them.
// Contract (the same for every helper): tests/clients/README.md.
//   node matrix.js ftps explicit|implicit | sftp password|key
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const { Readable, Writable } = require("stream");

function env(name) {
  const value = process.env[name];
  if (value === undefined) throw new Error(`missing ${name}`);
  return value;
}

const sha256 = (data) => crypto.createHash("sha256").update(data).digest("hex");

class Sink extends Writable {
  constructor() {
    super();
    this.chunks = [];
  }
  _write(chunk, _encoding, done) {
    this.chunks.push(chunk);
    done();
  }
  get bytes() {
    return Buffer.concat(this.chunks);
  }
}

async function ftps(implicit, payload, offset) {
  const ftp = require("basic-ftp");
  const client = new ftp.Client(15000);
  const remote = env("MATRIX_REMOTE");
  try {
    await client.access({
      host: env("MATRIX_HOST"),
      port: Number(env("MATRIX_PORT")),
      user: env("MATRIX_USER"),
      password: env("MATRIX_PASSWORD"),
      secure: implicit ? "implicit" : true,
      secureOptions: { ca: fs.readFileSync(env("MATRIX_CA")), servername: env("MATRIX_HOST") },
    });
    console.log("login ok");
    await client.uploadFrom(Readable.from([payload]), remote);
    console.log("upload ok");
    const listed = (await client.list()).find((f) => f.name === remote);
    if (!listed || listed.size !== payload.length) throw new Error(`listing lacks ${remote}`);
    console.log(`listed ${remote} ${listed.size}`);
    const whole = new Sink();
    await client.downloadTo(whole, remote);
    console.log(`sha256 ${sha256(whole.bytes)}`);
    const tail = new Sink();
    await client.downloadTo(tail, remote, offset);
    if (!tail.bytes.equals(payload.subarray(offset))) throw new Error("resumed download differs");
    console.log("resume ok");
  } finally {
    client.close();
  }
}

async function sftp(key, payload, offset) {
  const Client = require("ssh2-sftp-client");
  const client = new Client();
  const remote = env("MATRIX_REMOTE");
  const known = fs.readFileSync(env("MATRIX_KNOWN_HOSTS"), "utf8").trim().split(/\s+/);
  const hostKey = Buffer.from(known[2], "base64");
  const options = {
    host: env("MATRIX_HOST"),
    port: Number(env("MATRIX_PORT")),
    username: env("MATRIX_USER"),
    readyTimeout: 15000,
    // The server's key from known_hosts, compared byte for byte.
    hostVerifier: (presented) => Buffer.isBuffer(presented) && presented.equals(hostKey),
  };
  if (key) options.privateKey = fs.readFileSync(env("MATRIX_KEY"));
  else options.password = env("MATRIX_PASSWORD");
  await client.connect(options);
  try {
    console.log("login ok");
    await client.put(payload, remote);
    console.log("upload ok");
    const listed = (await client.list(".")).find((f) => f.name === remote);
    if (!listed || listed.size !== payload.length) throw new Error(`listing lacks ${remote}`);
    console.log(`listed ${remote} ${listed.size}`);
    const whole = await client.get(remote);
    console.log(`sha256 ${sha256(whole)}`);
    const tail = new Sink();
    await client.get(remote, tail, { readStreamOptions: { start: offset } });
    if (!tail.bytes.equals(payload.subarray(offset))) throw new Error("resumed download differs");
    console.log("resume ok");
  } finally {
    await client.end();
  }
}

async function main() {
  const [protocol, mode] = process.argv.slice(2);
  const payload = fs.readFileSync(env("MATRIX_PAYLOAD"));
  const offset = Number(env("MATRIX_RESUME_OFFSET"));
  if (protocol === "ftps") await ftps(mode === "implicit", payload, offset);
  else await sftp(mode === "key", payload, offset);
  console.log("done");
}

main().catch((error) => {
  console.log(`error: ${error && error.stack ? error.stack : error}`);
  process.exit(1);
});
