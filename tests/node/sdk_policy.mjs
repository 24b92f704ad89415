// A blocked prompt: the SDK must raise ConflictError after exactly one HTTP request. It retries a 409 unless
// the answer says `x-should-retry: false`, so its default retries stay on here.
// Environment: PROMPTGATE_BASE_URL.
import { client, described, report, sent, OpenAI } from './common.mjs';

const openai = client();
const out = {};
try {
  await openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: [{ role: 'user', content: 'deploy with key AKIAIOSFODNN7EXAMPLE please' }],
  });
  out.blocked = false;
} catch (e) {
  out.blocked = e instanceof OpenAI.ConflictError;
  Object.assign(out, described(e));
  out.policy = e?.error?.policy ?? null;
}
out.requests = sent.length;
report(out);
