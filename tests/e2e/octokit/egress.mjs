// The real Octokit (@octokit/rest) with the egress gateway as its baseUrl, as a workload uses
// it: its OIDC token as the auth token, scope and identity added to every request by a hook. Prints what it
// saw as one JSON line (tests/e2e/test_egress_gateway.py reads it).
//
//   OCTO_BASE_URL=https://sts.example.com/github OCTO_TOKEN=<oidc token> \
//   NODE_EXTRA_CA_CERTS=ca.pem node egress.mjs
import { Octokit } from "@octokit/rest";

const octokit = new Octokit({ baseUrl: process.env.OCTO_BASE_URL, auth: process.env.OCTO_TOKEN });
octokit.hook.before("request", (options) => {
  options.headers["x-octo-sts-scope"] = "octo-org/demo";
  options.headers["x-octo-sts-identity"] = "ci";
});
const repo = { owner: "octo-org", repo: "demo" };

const listing = await octokit.rest.repos.getContent({ ...repo, path: "" });
const issue = await octokit.rest.issues.create({ ...repo, title: "from octokit" });
let refused = null;
try {
  await octokit.rest.repos.createOrUpdateFileContents({
    ...repo,
    path: "octokit.txt",
    message: "beyond the policy",
    content: Buffer.from("x").toString("base64"),
  });
} catch (error) {
  refused = { status: error.status, message: error.response?.data?.message ?? null };
}
console.log(
  JSON.stringify({
    listing: listing.data.map((entry) => entry.name),
    issue: { status: issue.status, number: issue.data.number, title: issue.data.title },
    refused,
  }),
);
