// A plain useChat app on the server's WebSocket dialect: no custom client code, only
// the package's WebSocketChatTransport. The page reads its settings from #config.
import { useChat } from '@ai-sdk/react';
import { WebSocketChatTransport } from 'ai';
import { createRoot } from 'react-dom/client';

const config = JSON.parse(document.getElementById('config').textContent);
const transport = new WebSocketChatTransport({
  url: config.url,
  headers: { authorization: `Bearer ${config.token}` },
  body: { game_id: config.gameId },
});

function App() {
  const { messages, sendMessage, status, error } = useChat({ transport });
  return (
    <main>
      <p id="status">{status}</p>
      {error && <p id="error">{error.message}</p>}
      <ol id="messages">
        {messages.map((m) => (
          <li key={m.id} className={m.role}>
            {m.parts.map((p, i) =>
              p.type === 'text' ? <span key={i} className="text">{p.text}</span>
              : p.type === 'source-document' ? <cite key={i}>{p.title}</cite>
              : null)}
          </li>
        ))}
      </ol>
      <form onSubmit={(e) => {
        e.preventDefault();
        const input = e.currentTarget.elements.q;
        sendMessage({ text: input.value });
        input.value = '';
      }}>
        <input name="q" id="q" />
        <button type="submit">Send</button>
      </form>
    </main>
  );
}

createRoot(document.getElementById('root')).render(<App />);
