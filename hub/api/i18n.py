"""The web app's words, in Chinese (the default) and English: one table, looked up by key."""

from __future__ import annotations

from typing import Literal

Lang = Literal["zh", "en"]

TEXT: dict[str, tuple[str, str]] = {
    "app": ("安居 安装助手", "Anju installer"),
    "login": ("登录", "Log in"),
    "logout": ("退出", "Log out"),
    "pin": ("安装密码（主机标签上）", "Installer PIN (on the hub's label)"),
    "pin_wrong": ("密码不对。还可以试 {left} 次。", "Wrong PIN. {left} more tries."),
    "locked": ("尝试次数过多，请 {minutes} 分钟后再试。", "Too many tries: wait {minutes} min, then try again."),
    "expired": ("登录已过期，请重新登录。", "Your session has ended: log in again."),
    "csrf": (
        "表单已过期（或不是从本页面提交的）。请返回，刷新后再提交。",
        "This form has expired (or did not come from this page). Go back, reload and send it again.",
    ),
    "lan_only": ("只能在家庭网络内访问。", "Only reachable from the home network."),
    "invalid": ("有些内容需要修改：", "Some fields need fixing:"),
    "saved": ("已保存。", "Saved."),
    "household": ("住户", "Household"),
    "devices": ("设备", "Devices"),
    "pair": ("配对", "Pair"),
    "walk_test": ("走测", "Walk test"),
    "test_call": ("测试呼叫", "Test call"),
    "report": ("验收报告", "Report"),
    "elder_name": ("老人姓名", "Elder's name"),
    "address": ("地址", "Address"),
    "phone": ("电话", "Phone"),
    "contacts": ("紧急联系人", "Contacts"),
    "contact_name": ("姓名", "Name"),
    "relation": ("关系", "Relation"),
    "waking": ("作息时间（起床-睡觉）", "Waking hours"),
    "reminders": ("提醒", "Reminders"),
    "reminder_time": ("时间", "Time"),
    "reminder_text": ("内容（会读出来）", "Text (spoken)"),
    "save": ("保存", "Save"),
    "id": ("编号", "Id"),
    "kind": ("类型", "Kind"),
    "transport": ("连接", "Link"),
    "room": ("房间", "Room"),
    "battery": ("电量", "Battery"),
    "signal": ("信号", "Signal"),
    "last_seen": ("最后联系", "Last seen"),
    "status": ("状态", "Status"),
    "ok": ("正常", "OK"),
    "offline": ("离线", "Offline"),
    "never": ("未收到", "Not heard yet"),
    "remove": ("删除", "Remove"),
    "ble_nearby": ("附近的蓝牙设备（按信号排序）", "Bluetooth devices nearby (strongest first)"),
    "ble_none": ("还没有发现。请按一下设备的按钮，稍后刷新。", "None yet: press the device's button, then reload."),
    "encrypted": ("已加密", "encrypted"),
    "key": ("设备密钥（32位，设备标签或二维码上）", "Device key (32 hex digits, on the device's label or QR code)"),
    "add": ("添加", "Add"),
    "zigbee_open": ("打开 Zigbee 配对 120 秒", "Open Zigbee joining for 120 s"),
    "zigbee_open_until": (
        "Zigbee 配对已打开，到 {until}。请给设备上电或按配对键。",
        "Zigbee joining open until {until}: power the device or press its pair button.",
    ),
    "zigbee_joined": ("新加入的 Zigbee 设备", "Zigbee devices that joined"),
    "zigbee_none": ("还没有设备加入。", "No device has joined yet."),
    "gpio_add": ("有线设备（接在主机端子上）", "Wired device (on the hub's terminals)"),
    "pin_gpio": ("端子 (GPIO)", "Terminal (GPIO)"),
    "walk_intro": (
        "开始走测后，逐个触发每个设备（拉绳、按键、烟雾测试键）。触发后会变绿。",
        "Start the walk test, then trigger each device (pull, press, smoke test button). It turns green.",
    ),
    "walk_start": ("开始走测", "Start walk test"),
    "walk_stop": ("结束走测", "End walk test"),
    "walk_running": (
        "走测进行中：报警只会发出提示音，不会呼叫中心。",
        "Walk test running: devices chirp instead of calling the centre.",
    ),
    "walk_waiting": ("等待触发", "Waiting"),
    "walk_all": ("全部设备已通过。", "Every device passed."),
    "call_intro": (
        "通过每条线路向监控中心发送一条测试信息，并显示回执。",
        "Sends a test message to the centre over every path and shows each receipt.",
    ),
    "call_send": ("发送测试呼叫", "Send test call"),
    "path": ("线路", "Path"),
    "result": ("结果", "Result"),
    "installer": ("安装人员姓名", "Installer's name"),
    "make_report": ("生成报告并上报中心", "Make the report and send it to the centre"),
    "report_done": ("报告已生成，已上报中心。", "Report made and sent to the centre."),
    "download_pdf": ("下载 PDF", "Download PDF"),
    "view_html": ("查看网页版", "View as a page"),
    "not_found": ("没有找到。", "Not found."),
    "no_zigbee": ("这台主机没有 Zigbee 协调器。", "This hub has no Zigbee coordinator."),
    "error": ("出错了", "Something went wrong"),
    "back": ("返回", "Back"),
    "starting": ("主机正在启动，请稍候再试。", "The hub is starting: try again in a moment."),
    "lang_switch": ("English", "中文"),
}


def t(key: str, lang: Lang, **values: object) -> str:
    zh, en = TEXT[key]
    text = zh if lang == "zh" else en
    return text.format(**values) if values else text
