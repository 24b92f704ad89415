// A key the gateway does not know: the SDK raises AuthenticationError (401) and does not retry it.
// Environment: PROMPTGATE_BASE_URL, PROMPTGATE_KEY (the unknown key).
import { client, described, report, sent, OpenAI } from './common.mjs';

const openai = client({ apiKey: process.env.PROMPTGATE_KEY });
const out = {};
try {
  await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }] });
  out.authenticated = true;
} catch (e) {
  out.authenticated = false;
  out.authentication_error = e instanceof OpenAI.AuthenticationError;
  Object.assign(out, described(e));
}
out.requests = sent.length;
report(out);
