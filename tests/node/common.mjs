// What every script shares: the gateway's base URL from the environment, a fetch that counts the HTTP
// requests the SDK sends (retries included), and one line of JSON on stdout for the Rust test to read.
import OpenAI from 'openai';
import { VERSION } from 'openai/version';

/** The SDK's HTTP attempts, counted by the fetch handed to it. */
export const sent = [];

/** A client for the gateway under test; `options` go to the SDK as they are. */
export function client(options = {}) {
  return new OpenAI({
    baseURL: process.env.PROMPTGATE_BASE_URL,
    apiKey: 'sk-test-not-a-real-key',
    fetch: async (url, init) => {
      sent.push(String(url));
      return fetch(url, init);
    },
    ...options,
  });
}

/** Prints the script's result (the Rust side parses stdout as one JSON value). */
export function report(out) {
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

/** What the test needs of an error the SDK raised (never the whole object: it holds the request). */
export function described(e) {
  return {
    raised: e?.constructor?.name ?? typeof e,
    is_api_error: e instanceof OpenAI.APIError,
    status: e?.status ?? null,
    code: e?.code ?? null,
    type: e?.type ?? null,
    message: e?.message ?? String(e),
  };
}

export { OpenAI, VERSION };
