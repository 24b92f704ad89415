// A streamed answer that turns into a secret mid-stream: the text before it arrives, then the SDK raises
// APIError carrying the policy message.
// Environment: PROMPTGATE_BASE_URL, MOCK_CONTENT.
import { client, described, report, sent } from './common.mjs';

const openai = client({
  defaultHeaders: { 'x-mock-content': process.env.MOCK_CONTENT, 'x-mock-chunks': '6' },
  maxRetries: 0,
});
const received = [];
let out = { raised: null };
try {
  const stream = await openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: [{ role: 'user', content: 'tell me the key' }],
    stream: true,
  });
  for await (const event of stream) {
    for (const choice of event.choices ?? []) {
      if (choice.delta?.content) received.push(choice.delta.content);
    }
  }
} catch (e) {
  out = described(e);
}
out.received = received.join('');
out.requests = sent.length;
report(out);
