// A real OpenID Connect provider (the npm package oidc-provider) for
// Clickpass's upstream sign-in tests. It serves HTTPS on 127.0.0.1 with the
// certificate the test fixture made, knows one client (Clickpass), and signs
// in anyone with any login on its development interaction pages.
//
// Environment: OIDC_PORT, OIDC_CERT, OIDC_KEY, OIDC_CLIENT_ID,
// OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI; OIDC_IGNORE_REAUTH=1 makes it a
// provider that ignores prompt=login and max_age (it signs a person with a
// session in again without asking, and says when they last signed in).
// Prints "oidc-provider ready" once it listens. Test-only: never run this
// anywhere else.
import fs from 'node:fs';
import https from 'node:https';

import Provider, { interactionPolicy } from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`missing ${name}`);
    process.exit(2);
  }
  return value;
};

const port = Number(env('OIDC_PORT'));
const issuer = `https://127.0.0.1:${port}`;

const policy = interactionPolicy.base();
if (process.env.OIDC_IGNORE_REAUTH === '1') {
  const login = policy.get('login');
  login.checks.remove('login_prompt');
  login.checks.remove('max_age');
}

const provider = new Provider(issuer, {
  interactions: { policy },
  clients: [
    {
      client_id: env('OIDC_CLIENT_ID'),
      client_secret: env('OIDC_CLIENT_SECRET'),
      redirect_uris: [env('OIDC_REDIRECT_URI')],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'nickname'],
  },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: `${id}@example.test`,
          // A login starting with "unverified" has an email the provider did not verify.
          email_verified: !id.startsWith('unverified'),
          name: `Test ${id}`,
          nickname: `${id}-nick`,
        };
      },
    };
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['clickpass-test-only-cookie-key'] },
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));

const server = https.createServer(
  { key: fs.readFileSync(env('OIDC_KEY')), cert: fs.readFileSync(env('OIDC_CERT')) },
  provider.callback(),
);
server.listen(port, '127.0.0.1', () => console.log(`oidc-provider ready: ${issuer}`));

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
