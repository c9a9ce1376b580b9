<?xml version="1.0" encoding="utf-8"?>
<!-- Shown by a browser that opens a feed: what a feed is and how to follow it. -->
<xsl:stylesheet version="1.0"
    xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:atom="http://www.w3.org/2005/Atom">
<xsl:output method="html" encoding="utf-8" indent="yes"/>
<xsl:template match="/">
<html lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title><xsl:value-of select="/atom:feed/atom:title | /rss/channel/title"/> (feed)</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 42rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #1d1d1b; background: #fff; }
@media (prefers-color-scheme: dark) { body { color: #ececea; background: #1b1b1a; } a { color: #8cb8ee; } .note { background: #262624; } }
.note { background: #f1f0ea; padding: 1rem 1.25rem; border-radius: 8px; }
code { word-break: break-all; }
li { margin: .75rem 0; }
.date { color: #6b6b64; font-size: .9rem; }
</style>
</head>
<body>
<div class="note">
<p><strong>This is a web feed</strong>, a page made for feed readers rather than browsers.
Copy its address into your feed reader (NetNewsWire, Feedly, Thunderbird, …) to get new posts
of <a href="{{ site.url }}">{{ site.title }}</a> as they appear.</p>
<p>Prefer email? <a href="{{ site.subscribe_url }}">Subscribe to the newsletter</a>.</p>
</div>
<h1><xsl:value-of select="/atom:feed/atom:title | /rss/channel/title"/></h1>
<ul>
<xsl:for-each select="/atom:feed/atom:entry">
<li><a href="{atom:link/@href}"><xsl:value-of select="atom:title"/></a><br/>
<span class="date"><xsl:value-of select="substring(atom:published, 1, 10)"/></span></li>
</xsl:for-each>
<xsl:for-each select="/rss/channel/item">
<li><a href="{link}"><xsl:value-of select="title"/></a><br/>
<span class="date"><xsl:value-of select="pubDate"/></span></li>
</xsl:for-each>
</ul>
</body>
</html>
</xsl:template>
</xsl:stylesheet>
