// Package browsertest drives a headless Chromium through the Chrome DevTools Protocol, for
// the test that clicks through the SysCare Cockpit page (cockpit/) in a real browser.
package browsertest

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// Browser is a headless Chromium that takes DevTools commands over a pipe
// (--remote-debugging-pipe: NUL-terminated JSON on fds 3 and 4), which needs no
// websocket client and no port to pick.
type Browser struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	mu      sync.Mutex
	nextID  int
	pending map[int]chan reply
	done    chan struct{}
	err     error
	// Console collects the page's console messages and exceptions.
	Console []string
}

type reply struct {
	Result json.RawMessage
	Err    error
}

// Page is one tab, reached through a flat DevTools session.
type Page struct {
	b       *Browser
	session string
}

// Launch starts the browser binary (chromium-headless-shell or chromium) with a scratch
// profile directory.
func Launch(binary, profileDir string, stderr io.Writer) (*Browser, error) {
	toChrome, ourIn, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	ourOut, fromChrome, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, "--headless", "--remote-debugging-pipe", "--user-data-dir="+profileDir,
		// As root Chromium refuses its sandbox; the test's pages are our own.
		"--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1500,1000", "about:blank")
	cmd.ExtraFiles = []*os.File{toChrome, fromChrome}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	toChrome.Close()
	fromChrome.Close()
	b := &Browser{cmd: cmd, in: ourIn, pending: map[int]chan reply{}, done: make(chan struct{})}
	go b.read(ourOut)
	return b, nil
}

func (b *Browser) read(r io.ReadCloser) {
	defer r.Close()
	br := bufio.NewReaderSize(r, 1<<20)
	for {
		msg, err := br.ReadBytes(0)
		if err != nil {
			b.mu.Lock()
			b.err = fmt.Errorf("devtools pipe: %w", err)
			for id, c := range b.pending {
				c <- reply{Err: b.err}
				delete(b.pending, id)
			}
			b.mu.Unlock()
			close(b.done)
			return
		}
		var m struct {
			ID     int             `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(msg[:len(msg)-1], &m) != nil {
			continue
		}
		if m.ID == 0 {
			b.event(m.Method, m.Params)
			continue
		}
		b.mu.Lock()
		c := b.pending[m.ID]
		delete(b.pending, m.ID)
		b.mu.Unlock()
		if c == nil {
			continue
		}
		if m.Error != nil {
			c <- reply{Err: fmt.Errorf("devtools: %s (%d)", m.Error.Message, m.Error.Code)}
		} else {
			c <- reply{Result: m.Result}
		}
	}
}

// event keeps what the page logs: a failing page says why in the test's output.
func (b *Browser) event(method string, params json.RawMessage) {
	var line string
	switch method {
	case "Runtime.consoleAPICalled":
		var p struct {
			Type string `json:"type"`
			Args []struct {
				Value       any    `json:"value"`
				Description string `json:"description"`
			} `json:"args"`
		}
		json.Unmarshal(params, &p)
		line = "console." + p.Type + ":"
		for _, a := range p.Args {
			if a.Value != nil {
				line += fmt.Sprintf(" %v", a.Value)
			} else {
				line += " " + a.Description
			}
		}
	case "Runtime.exceptionThrown":
		var p struct {
			Details struct {
				Text      string `json:"text"`
				Exception struct {
					Description string `json:"description"`
				} `json:"exception"`
			} `json:"exceptionDetails"`
		}
		json.Unmarshal(params, &p)
		line = "exception: " + p.Details.Text + " " + p.Details.Exception.Description
	default:
		return
	}
	b.mu.Lock()
	b.Console = append(b.Console, line)
	b.mu.Unlock()
}

// call sends one command (on a session, or the browser's when session is "") and waits
// for its reply.
func (b *Browser) call(ctx context.Context, session, method string, params any, out any) error {
	b.mu.Lock()
	if b.err != nil {
		b.mu.Unlock()
		return b.err
	}
	b.nextID++
	id := b.nextID
	c := make(chan reply, 1)
	b.pending[id] = c
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	data, _ := json.Marshal(msg)
	_, err := b.in.Write(append(data, 0))
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case r := <-c:
		if r.Err != nil {
			return fmt.Errorf("%s: %w", method, r.Err)
		}
		if out != nil {
			return json.Unmarshal(r.Result, out)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// NewPage opens a tab and attaches to it.
func (b *Browser) NewPage(ctx context.Context) (*Page, error) {
	var target struct {
		TargetID string `json:"targetId"`
	}
	if err := b.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		return nil, err
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	if err := b.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		return nil, err
	}
	p := &Page{b: b, session: att.SessionID}
	for _, m := range []string{"Page.enable", "Runtime.enable"} {
		if err := b.call(ctx, p.session, m, nil, nil); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Close ends the browser.
func (b *Browser) Close() {
	b.call(context.Background(), "", "Browser.close", nil, nil)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		b.cmd.Process.Kill()
	}
	b.in.Close()
	b.cmd.Wait()
}

// Navigate loads url in the tab.
func (p *Page) Navigate(ctx context.Context, url string) error {
	var r struct {
		ErrorText string `json:"errorText"`
	}
	if err := p.b.call(ctx, p.session, "Page.navigate", map[string]any{"url": url}, &r); err != nil {
		return err
	}
	if r.ErrorText != "" {
		return fmt.Errorf("navigate %s: %s", url, r.ErrorText)
	}
	return nil
}

// Eval evaluates a JavaScript expression in the page (awaiting a promise) and stores its
// JSON value in out.
func (p *Page) Eval(ctx context.Context, expr string, out any) error {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	params := map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}
	if err := p.b.call(ctx, p.session, "Runtime.evaluate", params, &r); err != nil {
		return err
	}
	if r.Exception != nil {
		return fmt.Errorf("evaluate %q: %s %s", expr, r.Exception.Text, r.Exception.Exception.Description)
	}
	if out == nil || len(r.Result.Value) == 0 {
		return nil
	}
	return json.Unmarshal(r.Result.Value, out)
}

// ErrNotClickable says the element is absent, hidden or disabled.
var ErrNotClickable = errors.New("element not clickable")

// Click clicks the centre of the element selector names the way a user does: mouse
// events at its position, which reach the page through hit testing (a covered, hidden or
// disabled button does not take them).
func (p *Page) Click(ctx context.Context, selector string) error {
	sel, _ := json.Marshal(selector)
	var pos *struct {
		X, Y     float64
		Disabled bool
	}
	expr := fmt.Sprintf(`(() => { const e = document.querySelector(%s); if (!e) return null;
		e.scrollIntoView({block: "center"}); const r = e.getBoundingClientRect();
		if (r.width === 0 || r.height === 0) return null;
		return {X: r.x + r.width / 2, Y: r.y + r.height / 2, Disabled: !!e.disabled}; })()`, sel)
	if err := p.Eval(ctx, expr, &pos); err != nil {
		return err
	}
	if pos == nil || pos.Disabled {
		return fmt.Errorf("%w: %s", ErrNotClickable, selector)
	}
	for _, typ := range []string{"mouseMoved", "mousePressed", "mouseReleased"} {
		ev := map[string]any{"type": typ, "x": pos.X, "y": pos.Y, "button": "left", "clickCount": 1}
		if typ == "mouseMoved" {
			ev["button"] = "none"
			ev["clickCount"] = 0
		}
		if err := p.b.call(ctx, p.session, "Input.dispatchMouseEvent", ev, nil); err != nil {
			return err
		}
	}
	return nil
}

// Screenshot writes a PNG of the whole page to path.
func (p *Page) Screenshot(ctx context.Context, path string) error {
	var r struct {
		Data string `json:"data"`
	}
	if err := p.b.call(ctx, p.session, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &r); err != nil {
		return err
	}
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		return fmt.Errorf("screenshot: %w", err)
	}
	return os.WriteFile(path, png, 0o644)
}

// WaitTrue evaluates expr until it is true, or fails with the last value of describe.
func (p *Page) WaitTrue(ctx context.Context, d time.Duration, expr, describe string) error {
	end := time.Now().Add(d)
	for {
		var ok bool
		err := p.Eval(ctx, "!!("+expr+")", &ok)
		if err == nil && ok {
			return nil
		}
		if time.Now().After(end) {
			var seen any
			p.Eval(ctx, describe, &seen)
			if err != nil {
				return fmt.Errorf("waiting %s for %s: %w (page: %v)", d, expr, err, seen)
			}
			return fmt.Errorf("waiting %s for %s: still false (page: %v)", d, expr, seen)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
