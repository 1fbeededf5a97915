// Validates an AsyncAPI document with the official parser (@asyncapi/parser).
// Usage: node asyncapi-validate.mjs <url>; prints {"errors": [...], "messages": [...]}.
import { Parser } from '@asyncapi/parser';

const url = process.argv[2];
const response = await fetch(url);
const text = await response.text();
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text);
const errors = diagnostics.filter((d) => d.severity === 0).map((d) => `${d.path.join('.')}: ${d.message}`);
const messages = document ? document.allMessages().all().map((m) => m.name()) : [];
console.log(JSON.stringify({ errors, warnings: diagnostics.filter((d) => d.severity === 1).map((d) => `${d.path.join('.')}: ${d.message}`), messages }));
