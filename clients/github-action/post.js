"use strict";
const { revoke } = require("./lib.js");

async function post(env = process.env) {
  const token = env.STATE_token;
  if (!token) {
    process.stdout.write("No Octo STS token to revoke.\n");
    return;
  }
  const status = await revoke(env.GITHUB_API_URL || "https://api.github.com", token);
  if (status === 204) process.stdout.write("Revoked the Octo STS token.\n");
  // 401: already expired or revoked, which is the state we want.
  else if (status === 401) process.stdout.write("The Octo STS token was already invalid.\n");
  else process.stdout.write(`::warning::revoking the Octo STS token: GitHub answered HTTP ${status}\n`);
}

post().catch((err) => {
  // A failed revoke must not fail the job: the token expires within the hour anyway.
  process.stdout.write(`::warning::revoking the Octo STS token failed: ${String(err.message).replace(/\r?\n/g, " ")}\n`);
});
