import type { GuardConfig } from '../config/schema.js';
import { redactTarget } from '../http/target.js';

/** Query parameters that may carry a token: their values never reach a log line. */
export function pathRedactor(config: GuardConfig): (url: string | undefined) => string {
  const params = new Set(['access_token']);
  for (const auth of [config.auth, ...config.routes.map((r) => r.auth)]) if (auth) params.add(auth.jwt.queryParam);
  return (url) => redactTarget(url, params);
}
