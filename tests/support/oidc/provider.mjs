// The OpenID provider of the sign-in tests (tests/identity/test_oidc.py): oidc-provider, an
// OpenID Certified implementation, run with node on a loopback port the test chose.
//
// Configured by the environment variable OIDC_TEST_CONFIG (JSON):
//   {"port": 1234, "clients": [...oidc-provider client metadata...],
//    "accounts": {"olga": {"groups": ["staff"]}, ...}}
// Any login name is accepted with any password (oidc-provider's development interactions: a
// login form, then a consent form); the account's groups come from the config.
//
// The one thing that is not oidc-provider's own: a test hook that makes the token endpoint
// misbehave, to prove KubeKVM refuses what a broken or hostile provider could send. GET
// /__test/misbehave?mode=wrong-audience|expired (empty: behave) sets it; while set, the ID
// token of each token response is rewritten (aud another client's, azp ours; or iat and exp an hour and
// more in the past) and signed again with this provider's own key, so its signature is valid
// and only the rewritten claim is wrong.
import Provider from 'oidc-provider';
import * as jose from 'jose';

const config = JSON.parse(process.env.OIDC_TEST_CONFIG);
const issuer = `http://127.0.0.1:${config.port}`;
const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const kid = 'kubekvm-test';
const jwk = { ...(await jose.exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: { keys: [jwk] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({
      sub: `sub-${id}`,
      preferred_username: id,
      name: id,
      groups: config.accounts[id]?.groups ?? [],
    }),
  }),
  claims: { openid: ['sub'], profile: ['preferred_username', 'name'], groups: ['groups'] },
  scopes: ['openid', 'profile', 'groups'],
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  cookies: { keys: ['kubekvm-test-cookies'] },
});

let mode = '';
provider.use(async (ctx, next) => {
  if (ctx.path === '/__test/misbehave') {
    mode = ctx.query.mode || '';
    ctx.body = { mode };
    return;
  }
  await next();
  if (ctx.path === '/token' && ctx.status === 200 && mode && ctx.body && ctx.body.id_token) {
    const claims = jose.decodeJwt(ctx.body.id_token);
    const now = Math.floor(Date.now() / 1000);
    if (mode === 'wrong-audience') {
      // Issued to another client, naming ours as the authorized party: authlib's own checks
      // (azp only) pass this; the audience must be checked explicitly.
      claims.azp = claims.aud;
      claims.aud = 'another-app';
    } else if (mode === 'expired') {
      claims.iat = now - 7200;
      claims.exp = now - 3600;
    }
    const idToken = await new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid }).sign(privateKey);
    ctx.body = { ...ctx.body, id_token: idToken };
  }
});

provider.listen(config.port, '127.0.0.1', () => {
  console.log(`oidc-provider listening at ${issuer}`);
});
