// The peer of scripts/bench-oidc: the certified npm package oidc-provider,
// served by node's cluster with the same number of worker processes as the
// Clickpass node it is measured against, on one port the primary shares out.
// Sessions, grants, codes and tokens live in MariaDB (the adapter below), a
// store every worker shares, as Clickpass's workers share theirs.
//
// One client (confidential, client_secret_basic, authorization_code and
// refresh_token, RS256 ID tokens from one RSA 2048 key, PKCE), one account.
// Its interaction route signs the account in and grants what the client asks
// for without a page: the benchmark drives it once to make the session cookie
// and the grant that every later prompt=none request reuses.
//
// Environment: PEER_PORT, PEER_WORKERS, PEER_CLIENT_ID, PEER_CLIENT_SECRET,
// PEER_REDIRECT_URI, PEER_DB_HOST, PEER_DB_PORT, PEER_DB_USER,
// PEER_DB_PASSWORD, PEER_DB_NAME. Prints "peer ready" once every worker
// listens. Benchmark-only: never run this anywhere else.
import cluster from 'node:cluster';
import crypto from 'node:crypto';
import http from 'node:http';

import mysql from 'mysql2/promise';
import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (value === undefined || value === '') {
    console.error(`peer: missing ${name}`);
    process.exit(2);
  }
  return value;
};

const TABLE = 'bench_oidc_provider';
const ACCOUNT = 'bench-person';

const database = () =>
  mysql.createPool({
    host: env('PEER_DB_HOST'),
    port: Number(env('PEER_DB_PORT')),
    user: env('PEER_DB_USER'),
    password: env('PEER_DB_PASSWORD'),
    database: env('PEER_DB_NAME'),
    connectionLimit: 5,
  });

// oidc-provider's adapter contract (lib/adapters/memory_adapter.js) over one
// table: every model's rows keyed by (model, id), their payload as JSON.
class MariaDBAdapter {
  static pool;

  constructor(model) {
    this.model = model;
  }

  async upsert(id, payload, expiresIn) {
    const expires = expiresIn ? Math.floor(Date.now() / 1000) + expiresIn : null;
    await MariaDBAdapter.pool.execute(
      `INSERT INTO ${TABLE} (model, id, payload, grant_id, user_code, uid, expires) ` +
        'VALUES (?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE payload = VALUES(payload), ' +
        'grant_id = VALUES(grant_id), user_code = VALUES(user_code), uid = VALUES(uid), ' +
        'expires = VALUES(expires)',
      [
        this.model,
        id,
        JSON.stringify(payload),
        payload.grantId ?? null,
        payload.userCode ?? null,
        payload.uid ?? null,
        expires,
      ],
    );
  }

  async findBy(column, value) {
    const [rows] = await MariaDBAdapter.pool.execute(
      `SELECT payload, consumed, expires FROM ${TABLE} WHERE model = ? AND ${column} = ?`,
      [this.model, value],
    );
    const row = rows[0];
    if (!row || (row.expires !== null && row.expires <= Math.floor(Date.now() / 1000))) {
      return undefined;
    }
    const payload = JSON.parse(row.payload);
    return row.consumed === null ? payload : { ...payload, consumed: row.consumed };
  }

  find(id) {
    return this.findBy('id', id);
  }

  findByUid(uid) {
    return this.findBy('uid', uid);
  }

  findByUserCode(userCode) {
    return this.findBy('user_code', userCode);
  }

  async consume(id) {
    await MariaDBAdapter.pool.execute(
      `UPDATE ${TABLE} SET consumed = ? WHERE model = ? AND id = ?`,
      [Math.floor(Date.now() / 1000), this.model, id],
    );
  }

  async destroy(id) {
    await MariaDBAdapter.pool.execute(`DELETE FROM ${TABLE} WHERE model = ? AND id = ?`, [
      this.model,
      id,
    ]);
  }

  async revokeByGrantId(grantId) {
    await MariaDBAdapter.pool.execute(`DELETE FROM ${TABLE} WHERE grant_id = ?`, [grantId]);
  }
}

async function primary() {
  const pool = database();
  await pool.query(
    `CREATE TABLE IF NOT EXISTS ${TABLE} (model VARCHAR(32) NOT NULL, ` +
      'id VARCHAR(255) NOT NULL, payload TEXT NOT NULL, grant_id VARCHAR(255), ' +
      'user_code VARCHAR(255), uid VARCHAR(255), expires BIGINT, consumed BIGINT, ' +
      'PRIMARY KEY (model, id), KEY (grant_id), KEY (uid), KEY (user_code))',
  );
  await pool.end();
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench', use: 'sig', alg: 'RS256' };
  const workers = Number(env('PEER_WORKERS'));
  let listening = 0;
  cluster.on('listening', () => {
    listening += 1;
    if (listening === workers) console.log(`peer ready: ${workers} workers`);
  });
  cluster.on('exit', (worker, code) => {
    if (!stopping) console.error(`peer: worker ${worker.process.pid} exited (${code})`);
  });
  for (let i = 0; i < workers; i += 1) cluster.fork({ PEER_JWK: JSON.stringify(jwk) });
  let stopping = false;
  const stop = () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.kill();
    setTimeout(() => process.exit(0), 200);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

async function interaction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: ACCOUNT } };
  } else {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    result = { consent: { grantId: await grant.save() } };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

function worker() {
  MariaDBAdapter.pool = database();
  const port = Number(env('PEER_PORT'));
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    adapter: MariaDBAdapter,
    clients: [
      {
        client_id: env('PEER_CLIENT_ID'),
        client_secret: env('PEER_CLIENT_SECRET'),
        redirect_uris: [env('PEER_REDIRECT_URI')],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: 'RS256',
      },
    ],
    jwks: { keys: [JSON.parse(env('PEER_JWK'))] },
    cookies: { keys: ['clickpass-bench-only-cookie-key'] },
    pkce: { required: () => true },
    // Clickpass answers every code exchange with a refresh token too.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Clickpass's lifetimes (clickpass/oidc/tokens.py); a session as long as a refresh token.
    ttl: {
      AuthorizationCode: 60,
      AccessToken: 3600,
      IdToken: 3600,
      RefreshToken: 30 * 86400,
      Grant: 30 * 86400,
      Session: 30 * 86400,
      Interaction: 3600,
    },
    interactions: { url: (ctx, details) => `/interaction/${details.uid}` },
    features: { devInteractions: { enabled: false } },
    async findAccount(ctx, id) {
      return { accountId: id, async claims() { return { sub: id }; } };
    },
  });
  provider.on('server_error', (ctx, err) => console.error('peer: server_error', err));
  const callback = provider.callback();
  http
    .createServer((req, res) => {
      if (req.url.startsWith('/interaction/')) {
        interaction(provider, req, res).catch((err) => {
          console.error('peer: interaction', err);
          res.statusCode = 500;
          res.end();
        });
      } else {
        callback(req, res);
      }
    })
    .listen(port, '127.0.0.1');
}

if (cluster.isPrimary) {
  primary().catch((err) => {
    console.error('peer:', err);
    process.exit(1);
  });
} else {
  worker();
}
