"use strict";
const { input, fetchOidcToken, exchange, appendFileCommand } = require("./lib.js");

async function main(env = process.env) {
  const scope = input(env, "scope");
  const identity = input(env, "identity");
  const domain = input(env, "domain");
  if (!scope || !identity || !domain) throw new Error("inputs scope, identity and domain are required");
  const endpoint = input(env, "endpoint", `https://${domain}`);
  const audience = input(env, "audience", domain);

  const oidc = await fetchOidcToken(env, audience);
  process.stdout.write(`::add-mask::${oidc}\n`);
  const token = await exchange(endpoint, scope, identity, oidc);
  // Mask before anything else can print it.
  process.stdout.write(`::add-mask::${token}\n`);
  if (!env.GITHUB_OUTPUT || !env.GITHUB_STATE) throw new Error("GITHUB_OUTPUT/GITHUB_STATE are not set");
  appendFileCommand(env.GITHUB_OUTPUT, "token", token);
  if (input(env, "revoke", "true") === "true") appendFileCommand(env.GITHUB_STATE, "token", token);
  process.stdout.write(`Exchanged an Octo STS token for ${scope} (identity ${identity}).\n`);
}

main().catch((err) => {
  process.stdout.write(`::error::${String(err.message).replace(/\r?\n/g, " ")}\n`);
  process.exitCode = 1;
});
