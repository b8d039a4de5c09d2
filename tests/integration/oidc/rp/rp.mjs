// A relying party on openid-client, driven by the provider's tests over
// stdin/stdout, one JSON line each way:
//   argv: issuer client_id client_secret|"" redirect_uri alg basic|post|none
//   prints {"authorize": URL}, reads the URL the provider sent back,
//   exchanges the code (PKCE S256, state, nonce, iss checked; the ID token
//   verified against the JWKS), fetches UserInfo, refreshes, and prints
//   {"sub", "claims", "userinfo", "refreshed_sub"}; an error prints {"error"}.
import * as client from 'openid-client';
import * as readline from 'node:readline';

const [issuer, clientId, secret, redirectUri, alg, auth] = process.argv.slice(2);

function authentication() {
  if (auth === 'none') return client.None();
  if (auth === 'basic') return client.ClientSecretBasic(secret);
  return client.ClientSecretPost(secret);
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin });
  const input = lines[Symbol.asyncIterator]();
  const config = await client.discovery(
    new URL(issuer),
    clientId,
    { id_token_signed_response_alg: alg },
    authentication(),
    { execute: [client.allowInsecureRequests] },
  );
  const verifier = client.randomPKCECodeVerifier();
  const challenge = await client.calculatePKCECodeChallenge(verifier);
  const nonce = client.randomNonce();
  const state = client.randomState();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid profile email',
    code_challenge: challenge,
    code_challenge_method: 'S256',
    nonce,
    state,
  });
  console.log(JSON.stringify({ authorize: url.href }));
  const back = (await input.next()).value;
  const tokens = await client.authorizationCodeGrant(config, new URL(back), {
    pkceCodeVerifier: verifier,
    expectedNonce: nonce,
    expectedState: state,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  console.log(JSON.stringify({
    sub: claims.sub,
    claims,
    userinfo,
    refreshed_sub: refreshed.claims().sub,
    rotated: refreshed.refresh_token !== tokens.refresh_token,
  }));
  lines.close();
}

main().catch((error) => {
  console.log(JSON.stringify({ error: `${error.name}: ${error.message} ${error.code ?? ''}` }));
  process.exitCode = 1;
});
