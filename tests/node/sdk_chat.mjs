// One plain and one streamed chat completion through the gateway.
// Environment: PROMPTGATE_BASE_URL, MOCK_CONTENT (the answer the mock is told to send).
import { client, report, sent, VERSION } from './common.mjs';

const openai = client({
  defaultHeaders: { 'x-mock-content': process.env.MOCK_CONTENT, 'x-mock-chunks': '5' },
  maxRetries: 0,
});

const { data: plain, request_id } = await openai.chat.completions
  .create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }] })
  .withResponse();

const pieces = [];
const stream = await openai.chat.completions.create({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'Say hello, streamed' }],
  stream: true,
});
for await (const event of stream) {
  for (const choice of event.choices) {
    if (choice.delta?.content) pieces.push(choice.delta.content);
  }
}

report({
  plain: plain.choices[0].message.content,
  plain_request_id: request_id,
  stream: pieces.join(''),
  stream_events: pieces.length,
  requests: sent.length,
  sdk_version: VERSION,
});
