// A gateway key whose request quota is one per window: the first call uses it; the second gets 429 with
// `retry-after-ms`, which the SDK (maxRetries 2) waits out before it succeeds.
// Environment: PROMPTGATE_BASE_URL, PROMPTGATE_KEY (the gateway key).
import { client, described, report, sent } from './common.mjs';

const openai = client({ apiKey: process.env.PROMPTGATE_KEY, maxRetries: 2 });
const ask = () =>
  openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }] });

const out = {};
out.first = (await ask()).choices[0].message.content;
out.first_requests = sent.length;
try {
  out.second = (await ask()).choices[0].message.content;
} catch (e) {
  out.second = null;
  out.second_error = described(e);
}
out.second_requests = sent.length - out.first_requests;
report(out);
