// A real client of the server's AI SDK dialects: the `ai` package's own transports.
//
// Usage: node --experimental-websocket client.mjs '<spec JSON>'
//   spec: {transport: "ws" | "http", action: "send" | "resume", base: "http://host:port",
//          token, chatId, gameId?, text?, trigger?, abortAfterDeltas?, dropAfterDeltas?}
// Prints one JSON line: {outcome: "stream" | "no-active" | "failed", error?, chunks,
//   text, sources, invalid}. Every chunk is checked against the package's own
//   uiMessageChunkSchema, and each of its keys must be one the schema names (see
//   unknownKeys); a chunk that fails lands in `invalid`.
import {
  DefaultChatTransport,
  WebSocketChatTransport,
  readUIMessageStream,
  uiMessageChunkSchema,
} from 'ai';

const spec = JSON.parse(process.argv[2]);
const schema = uiMessageChunkSchema();
// The schema's fields typed `unknown` (a probe cannot tell them from unknown keys).
const UNTYPED = new Set(['data', 'input', 'output', 'messageMetadata', 'approvalDescriptor', 'inputSchemaInput']);

async function valid(value) {
  const result = await schema.validate(value);
  return result.success;
}

// The schema's objects are loose (they let unknown keys through), so a key is known
// when giving it a value of no JSON type makes the chunk fail validation.
async function unknownKeys(chunk) {
  const unknown = [];
  for (const key of Object.keys(chunk)) {
    if (key === 'type' || UNTYPED.has(key)) continue;
    if (await valid({ ...chunk, [key]: Symbol('probe') })) unknown.push(key);
  }
  return unknown;
}

function transport() {
  const headers = { authorization: `Bearer ${spec.token}` };
  const body = spec.gameId ? { game_id: spec.gameId, language: 'en' } : {};
  if (spec.transport === 'ws') {
    const url = spec.base.replace(/^http/, 'ws') + '/ws/ai-sdk';
    return new WebSocketChatTransport({ url, headers, body });
  }
  return new DefaultChatTransport({ api: `${spec.base}/ai-sdk/chat`, headers, body });
}

const chat = transport();
const abort = new AbortController();
const chunks = [];
const invalid = [];
let deltas = 0;
let outcome = 'stream';
let error = null;

function userMessage() {
  return { id: `u-${Date.now()}`, role: 'user', parts: [{ type: 'text', text: spec.text ?? '' }] };
}

async function open() {
  if (spec.action === 'resume') {
    return chat.reconnectToStream({ chatId: spec.chatId, abortSignal: abort.signal });
  }
  return chat.sendMessages({
    chatId: spec.chatId,
    messages: spec.trigger === 'regenerate-message' ? [] : [userMessage()],
    trigger: spec.trigger ?? 'submit-message',
    messageId: undefined,
    abortSignal: abort.signal,
  });
}

const result = { chunks, invalid };
try {
  const stream = await open();
  if (stream == null) {
    outcome = 'no-active';
  } else {
    const [mine, ui] = stream.tee();
    const messages = readUIMessageStream({ stream: ui, onError: () => {} });
    const reader = mine.getReader();
    const building = (async () => {
      let last;
      for await (const message of messages) last = message;
      return last;
    })();
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(value);
      if (!(await valid(value))) invalid.push({ chunk: value, why: 'schema' });
      const extra = await unknownKeys(value);
      if (extra.length) invalid.push({ chunk: value, why: `unknown keys ${extra.join(',')}` });
      if (value.type === 'text-delta') {
        deltas += 1;
        if (spec.abortAfterDeltas === deltas) abort.abort();
        if (spec.dropAfterDeltas === deltas) {
          if (spec.transport === 'ws') chat.close();
          else abort.abort();
          break;
        }
      }
    }
    const message = await building.catch(() => undefined);
    if (message) {
      result.text = message.parts.filter((p) => p.type === 'text').map((p) => p.text).join('');
      result.sources = message.parts.filter((p) => p.type === 'source-document');
      result.messageId = message.id;
    }
  }
} catch (e) {
  outcome = 'failed';
  error = String(e?.message ?? e);
  result.status = e?.statusCode;
  result.responseBody = e?.responseBody;
}
if (spec.abortAfterDeltas) await new Promise((r) => setTimeout(r, 300)); // as a page stays open
if (spec.transport === 'ws') chat.close();
result.outcome = outcome;
result.error = error;
result.text ??= chunks.filter((c) => c.type === 'text-delta').map((c) => c.delta).join('');
console.log(JSON.stringify(result));
process.exit(0);
